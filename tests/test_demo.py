"""`make demo`: scripts/demo.py runs any example headless on the embedded ComfyUI (default: two_subjects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from devkit.runtime import PACK_ROOT

pytestmark = pytest.mark.slow  # every test runs scripts/demo.py in a child process
MODEL_FILES = ("models/checkpoints/sd_xl_base_1.0.safetensors", "models/clip_vision/clip_vision_g.safetensors",
               "models/msdiffusion/ms_adapter.bin")
EXAMPLES = PACK_ROOT / "example_workflows"
OTHER_KINDS = ("ssr_two_subjects", "fastcomposer_two_people", "anystory_flux")  # SSR-Encoder, FastComposer, AnyStory
MODEL_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def listed_models(workflow: dict) -> list[dict]:
    """What the example declares about its model files: each file widget's node entry (properties.models for the
    Missing Models dialog, properties.manual_models for the files fetched by hand), plus the workflow's own."""
    entries = [*workflow.get("models", []), *workflow.get("extra", {}).get("manual_models", [])]
    for node in workflow["nodes"]:
        properties = node.get("properties", {})
        listed = {m["name"]: m for key in ("models", "manual_models") for m in properties.get(key, [])}
        entries += [listed[v] for v in node["widgets_values"] if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)]
    return entries


def node_types(workflow: dict) -> set[str]:
    return {node["type"] for node in workflow["nodes"]}


def run_demo(*args: str, timeout: float = 600) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "scripts.demo", *args], capture_output=True, text=True, timeout=timeout,
                            cwd=PACK_ROOT)
    return result.returncode, result.stdout + result.stderr


def fake_comfyui(tmp_path: Path) -> Path:
    """A ComfyUI folder without models (the demo checks its files before it starts anything)."""
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text("raise SystemExit('the demo must not start a server when files are missing')\n")
    return root


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_tiny_demo_runs_the_example_and_writes_the_image_and_the_route_preview(tmp_path):
    rex = tmp_path / "photos" / "rex.jpg"
    rex.parent.mkdir()
    Image.new("RGB", (90, 70), (120, 80, 40)).save(rex)
    out = tmp_path / "output"
    code, log = run_demo("--tiny", "--steps", "2", "--size", "128", "128", "--output-dir", str(out), "--subject", f"dog={rex}")
    assert code == 0, log[-5000:]
    assert Image.open(out / "demo-tiny.png").size == (128, 128)
    routes = Image.open(out / "demo-tiny_routes.png")
    assert routes.width >= 128 and routes.height >= 128
    assert "tiny random-weight stand-ins" in log
    assert "two_subjects.json" in log and "128x128" in log
    assert "step 1/2" in log and "step 2/2" in log  # relayed from the websocket
    assert str(rex) in log  # the given reference...
    assert "the example's drawing" in log and "--subject cat=PATH" in log  # ...and the example's drawing for the other


def test_without_models_the_demo_lists_each_missing_file_and_where_it_goes(tmp_path):
    root = fake_comfyui(tmp_path)
    code, log = run_demo("--comfyui", str(root), "--output-dir", str(tmp_path / "out"), timeout=60)
    assert code == 2, log
    for relative in (*MODEL_FILES, "input/dog.png", "input/cat.png"):
        assert str(root / relative) in log, relative
    assert "5 file(s) missing" in log
    assert "huggingface.co/doge1516/MS-Diffusion" in log and "comfyanonymous/clip_vision_g" in log and "stable-diffusion-xl-base" in log
    assert "make demo TINY=1" in log
    assert "must not start" not in log


def test_the_demo_uses_what_is_there_and_lists_only_the_rest(tmp_path):
    root = fake_comfyui(tmp_path)
    touch(root / MODEL_FILES[0])
    touch(root / MODEL_FILES[1])
    touch(root / "models" / "msdiffusion" / "ms_adapter_fp16.safetensors")  # a conversion counts as the encoder
    (root / "input").mkdir()
    Image.new("RGB", (8, 8)).save(root / "input" / "dog.png")
    missing_cat = tmp_path / "nowhere" / "cat.jpg"
    code, log = run_demo("--comfyui", str(root), "--subject", f"cat={missing_cat}", "--output-dir", str(tmp_path / "out"), timeout=60)
    assert code == 2, log
    assert "1 file(s) missing" in log and str(missing_cat) in log and "--subject" in log
    for relative in MODEL_FILES:
        assert str(root / relative) not in log, relative
    assert "dog.png" not in log


def test_the_demo_refuses_a_subject_the_workflow_does_not_have(tmp_path):
    code, log = run_demo("--comfyui", str(fake_comfyui(tmp_path)), "--subject", "horse=x.png", timeout=60)
    assert code == 1
    assert "the workflow's subjects are dog, cat" in log


@pytest.mark.parametrize("name", OTHER_KINDS)
def test_tiny_demo_runs_an_example_of_each_other_kind(name, tmp_path):
    """WORKFLOW=NAME: the example's own graph on the tiny stand-ins, with a tiny file for each model no loader replaces."""
    out = tmp_path / "output"
    code, log = run_demo("--tiny", "--workflow", name, "--steps", "2", "--size", "128", "128", "--output-dir", str(out))
    assert code == 0, log[-5000:]
    assert Image.open(out / f"demo-tiny-{name}.png").size == (128, 128)
    assert (out / f"demo-tiny-{name}_routes.png").exists() == ("MSP_RouterMaskPreview" in node_types(example(name)))
    assert f"{name}.json" in log and "128x128" in log and "step 2/2" in log
    if name == "anystory_flux":  # its preview asks for step 5 of a 2-step run: the node's warning, in the demo's console
        assert "[demo] server: Router Mask Preview: step 5 not shown" in log, log[-3000:]
    encoder = next(n for n in example(name)["nodes"] if n["type"] == "MSP_LoadSubjectEncoder")
    folder = [*encoder["properties"].get("models", []), *encoder["properties"].get("manual_models", [])][0]["directory"]
    assert f"models/{folder}/{encoder['widgets_values'][0]}" in log  # written tiny under the example's own name


@pytest.mark.parametrize("name", OTHER_KINDS)
def test_without_models_the_demo_lists_the_files_that_example_needs(name, tmp_path):
    root = fake_comfyui(tmp_path)
    workflow = example(name)
    code, log = run_demo("--comfyui", str(root), "--workflow", name, "--output-dir", str(tmp_path / "out"), timeout=60)
    assert code == 2, log
    models = listed_models(workflow)
    images = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LoadImage"]
    for entry in models:  # where it goes, and where it comes from (FastComposer's: the pack's conversion script)
        source = "written by scripts/convert_fastcomposer.py" if "convert_fastcomposer.py" in entry["url"] else f"download {entry['url']}"
        assert f"{root / 'models' / entry['directory'] / entry['name']}  <- {source}" in log, entry
    for image in images:
        assert str(root / "input" / image) in log, image
    assert f"{len(models) + len(images)} file(s) missing" in log
    for relative in MODEL_FILES:  # nothing of MS-Diffusion's
        assert relative not in log, relative
    assert "must not start" not in log


def test_make_demo_passes_the_workflow_and_tiny_mode(tmp_path):
    result = subprocess.run(["make", "-n", "demo", "WORKFLOW=ssr_two_subjects", "TINY=1"], capture_output=True, text=True,
                            timeout=60, cwd=PACK_ROOT)
    assert result.returncode == 0, result.stderr
    assert "-m scripts.demo --tiny --workflow ssr_two_subjects" in result.stdout


def test_make_demo_passes_subjects_and_size():
    result = subprocess.run(["make", "-n", "demo", "SUBJECTS=dog=photos/rex.jpg cat=/tmp/tom.png", "SIZE=768x512"],
                            capture_output=True, text=True, timeout=60, cwd=PACK_ROOT)
    assert result.returncode == 0, result.stderr
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "-m scripts.demo --subject dog=photos/rex.jpg --subject cat=/tmp/tom.png --size 768 512" in command, command


def sized_prompt(*args: str) -> dict:
    """What the demo does to an SDXL example's size (1024x1024) with these options."""
    from scripts import demo

    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
              "2": {"class_type": "KSampler", "inputs": {"steps": 30}}}
    demo.prepare_prompt(prompt, demo.parse_args(list(args)), {}, {})
    return prompt["1"]["inputs"]


def test_tiny_keeps_the_example_size_unless_a_size_is_given():
    assert sized_prompt("--tiny") == {"width": 1024, "height": 1024, "batch_size": 1}
    assert sized_prompt("--tiny", "--size", "512")["width"] == 512 == sized_prompt("--tiny", "--size", "512")["height"]
    assert (sized_prompt("--size", "768", "512")["width"], sized_prompt("--size", "768", "512")["height"]) == (768, 512)


def test_the_output_names_are_the_ones_readme_gives():
    from scripts import demo

    readme = (PACK_ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `make demo` |"))
    for tiny, workflow in ((False, ""), (True, ""), (False, "NAME"), (True, "NAME")):
        stem = demo.output_stem(tiny, workflow)
        assert f"`output/{stem}.png`" in row, stem
    assert "`output/demo_routes.png`" in row and "`output/demo-tiny_routes.png`" in row
    assert "256 px" not in row


def test_an_unknown_workflow_lists_the_shipped_examples(tmp_path):
    code, log = run_demo("--comfyui", str(fake_comfyui(tmp_path)), "--workflow", "no_such_example", timeout=60)
    assert code == 2 and "no workflow file 'no_such_example'" in log
    assert "anystory_flux" in log and "ssr_two_subjects" in log
