"""The example workflows: real UI-format workflows, converted by the project's converter, run on the real server.

Every file in example_workflows/ is converted with scripts/workflow_api.py against the test
server's /object_info, its multi-GB model loaders are swapped for the test-only tiny ones
(the real LoraLoader loads a tiny LoRA file written into the server's models/loras), sizes
and steps are shrunk, and it is run over HTTP and the websocket. In headless Chromium, the real
frontend loads every example and its own API prompt must equal the converter's.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.parse

import pytest
from PIL import Image

import browser_support
from devkit import tiny_files
from devkit.runtime import PACK_ROOT
from devkit.server import PromptRefused
from devkit.pack import pack
from scripts import demo, model_metadata, workflow_api
from scripts.embedded_comfyui import PACK_LINK
from scripts.workflow_api import WorkflowError, load_workflow, workflow_to_prompt

EXAMPLES_DIR = PACK_ROOT / "example_workflows"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))
# three examples (MS-Diffusion, AnyStory, FastComposer) as saved before the kinds declared their capabilities
SAVED_DIR = PACK_ROOT / "tests" / "fixtures" / "saved_workflows"
SAVED_WORKFLOWS = [SAVED_DIR / f"{name}.json" for name in ("two_subjects", "anystory_flux", "fastcomposer_two_people")]
SD15_EXAMPLES = {"ssr_two_subjects", "ssr_one_photo_two_subjects"}  # SSR-Encoder on SD1.5
FLUX_EXAMPLES = {"anystory_flux"}  # AnyStory on FLUX.1-dev
FASTCOMPOSER_EXAMPLES = {"fastcomposer_two_people"}  # FastComposer on SD1.5
LAMIC_EXAMPLES = {"lamic_kontext_three_refs": "Kontext", "lamic_qwen_edit_two_refs": "Qwen-Image-Edit",
                  "lamic_flux2_three_refs": "FLUX.2"}  # LAMIC on the in-context models
EXPECTED = ({"two_subjects", "subject_and_scene", "three_subjects", "controlnet_canny", "lora", "hires_fix", "auto_routing"}
            | SD15_EXAMPLES | FLUX_EXAMPLES | FASTCOMPOSER_EXAMPLES | set(LAMIC_EXAMPLES))
REAL_MODELS = {"CheckpointLoaderSimple": "sd_xl_base_1.0.safetensors", "CLIPVisionLoader": "clip_vision_g.safetensors",
               "MSP_LoadSubjectEncoder": "ms_adapter.bin"}
SD15_REAL_MODELS = {"CheckpointLoaderSimple": "v1-5-pruned-emaonly.safetensors", "CLIPVisionLoader": "clip-vit-large-patch14.safetensors",
                    "MSP_LoadSubjectEncoder": "pytorch_model.bin"}
FLUX_REAL_MODELS = {"UNETLoader": "flux1-dev.safetensors", "VAELoader": "ae.safetensors",
                    "CLIPVisionLoader": "sigclip_vision_patch14_384.safetensors", "StyleModelLoader": "flux1-redux-dev.safetensors",
                    "MSP_LoadSubjectEncoder": "anystory_flux.bin"}
FASTCOMPOSER_REAL_MODELS = {"CheckpointLoaderSimple": "v1-5-pruned-emaonly.safetensors",
                            "UNETLoader": "fastcomposer_unet.safetensors", "MSP_LoadSubjectEncoder": "fastcomposer_encoder.safetensors"}
LAMIC_REAL_MODELS = {
    "Kontext": {"UNETLoader": "flux1-kontext-dev.safetensors", "VAELoader": "ae.safetensors", "MSP_LoadSubjectEncoder": "LAMIC (no weights file)"},
    "Qwen-Image-Edit": {"UNETLoader": "qwen_image_edit_2509_fp8_e4m3fn.safetensors", "CLIPLoader": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "VAELoader": "qwen_image_vae.safetensors", "MSP_LoadSubjectEncoder": "LAMIC (no weights file)"},
    "FLUX.2": {"UNETLoader": "flux2_dev_fp8mixed.safetensors", "CLIPLoader": "mistral_3_small_flux2_bf16.safetensors",
               "VAELoader": "flux2-vae.safetensors", "MSP_LoadSubjectEncoder": "LAMIC (no weights file)"},
}
# the official defaults of each kind: (CFG, sampler, subject scale, steps); FastComposer has no scale (the widget's default)
DEFAULTS = {"SDXL": (7.5, "euler", 0.6, 30), "SD1.5": (5.0, "euler", 0.65, 30), "FLUX": (1.0, "euler", 0.6, 25),
            "FastComposer": (5.0, "euler", 0.6, 50),
            # LAMIC's on Kontext; ComfyUI's templates' on Qwen-Image-Edit-2509 and FLUX.2 (LAMIC has none there)
            "Kontext": (1.0, "euler", 0.6, 20), "Qwen-Image-Edit": (2.5, "euler", 0.6, 20), "FLUX.2": (1.0, "euler", 0.6, 20)}


def base_model(path) -> str:
    if path.stem in LAMIC_EXAMPLES:
        return LAMIC_EXAMPLES[path.stem]
    return "SD1.5" if path.stem in SD15_EXAMPLES else "FLUX" if path.stem in FLUX_EXAMPLES else "SDXL"


def defaults_of(path) -> str:
    """Whose official defaults and model files an example has: its kind's where a base model has several kinds."""
    return "FastComposer" if path.stem in FASTCOMPOSER_EXAMPLES else base_model(path)


SHRINK = 8  # 1024 px -> 128 px
TEST_STEPS = 2


def by_type(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def examples_server(comfy_server):
    """The session server plus what the examples need beyond dog.png / cat.png: more references, tiny model files."""
    import numpy as np
    from PIL import ImageDraw

    inputs = comfy_server.base / "input"
    for i, name in enumerate(("beach.png", "teddy_bear.png", "man_and_dog.png", "man.png", "woman.png")):
        pixels = np.random.default_rng(10 + i).integers(0, 255, (72, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / name)
    edges = Image.new("RGB", (160, 160), "black")
    draw = ImageDraw.Draw(edges)
    draw.rectangle((20, 50, 70, 130), outline="white", width=4)
    draw.ellipse((95, 50, 145, 130), outline="white", width=4)
    edges.save(inputs / "canny_source.png")
    written = []
    for path in EXAMPLES:  # the files no tiny loader replaces (subject encoders, LoRAs), written as `make demo TINY=1` does
        models, _ = demo.workflow_files(load_workflow(path))
        written += tiny_files.write_tiny_files(comfy_server.base / "models", [(m.folder, m.name) for m in models])
    yield comfy_server
    for file in written:  # the session server is left as found: later modules test what a missing file says
        file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def object_info(examples_server):
    return examples_server.get("/object_info")


# ------------------------------------------------------------------ test-run preparation


def shrink(prompt: dict, steps: int = TEST_STEPS) -> dict:
    """Tiny-model speed: 1/8 of every size, a few steps; auto routing from step 1.

    Router Mask Preview keeps the example's steps: those beyond the shortened run are reported, not failed.
    """
    # TextEncodeQwenImageEditPlus encodes its references at 1 MP whatever the output size: one CFG row keeps the run
    # short (both rows: tests/lamic/test_qwen_properties.py)
    one_row = any(node["class_type"] == "TextEncodeQwenImageEditPlus" for node in prompt.values())
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "KSampler" and one_row:
            inputs["cfg"] = 1.0
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage", "MSP_DrawLayoutBox"):
            for key in ("width", "height"):
                inputs[key] = max(64, inputs[key] // SHRINK // 8 * 8)
        elif kind == "KSampler":
            inputs["steps"] = steps
        elif kind == "MSP_ApplyMultiSubjectAttention" and inputs.get("auto_routing"):
            inputs["start_step"] = 1
    return prompt


def runnable_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt a test submits: converted, tiny stand-ins, shrunk."""
    return shrink(demo.use_tiny_stand_ins(workflow_to_prompt(workflow, object_info)))


def pixel_size(prompt: dict, ref: list) -> tuple[int, int]:
    """(width, height) of the image or latent that output ``ref`` carries."""
    node = prompt[ref[0]]
    kind, inputs = node["class_type"], node["inputs"]
    if kind in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage"):
        return inputs["width"], inputs["height"]
    if kind == "LatentUpscaleBy":
        width, height = pixel_size(prompt, inputs["samples"])
        return round(width // 8 * inputs["scale_by"]) * 8, round(height // 8 * inputs["scale_by"]) * 8
    upstream = {"KSampler": "latent_image", "VAEDecode": "samples", "SaveImage": "images"}[kind]
    return pixel_size(prompt, inputs[upstream])


def positive_text(prompt: dict, sampler_id: str) -> str:
    ref = prompt[sampler_id]["inputs"]["positive"]
    while prompt[ref[0]]["class_type"] not in ("CLIPTextEncode", "TextEncodeQwenImageEditPlus"):
        inputs = prompt[ref[0]]["inputs"]
        ref = inputs.get("positive", inputs.get("conditioning"))  # through ControlNetApplyAdvanced, FluxGuidance, ReferenceLatent
    inputs = prompt[ref[0]]["inputs"]
    text = inputs.get("text", inputs.get("prompt"))
    return prompt[text[0]]["inputs"]["value"] if isinstance(text, list) else text  # a text node feeding it


def view(server, image: dict) -> Image.Image:
    query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
    return Image.open(io.BytesIO(server.read(f"/view?{query}")))


# ------------------------------------------------------------------ the examples themselves


def test_the_examples_are_all_there_and_the_template_browser_lists_them(examples_server):
    assert {p.stem for p in EXAMPLES} == EXPECTED
    readme = (EXAMPLES_DIR / "README.md").read_text()
    for name in EXPECTED:
        assert f"{name}.json" in readme, name
    listed = examples_server.get("/api/workflow_templates")
    assert set(listed[PACK_LINK]) == EXPECTED
    served = examples_server.get(f"/api/workflow_templates/{PACK_LINK}/two_subjects.json")
    assert served == load_workflow(EXAMPLES_DIR / "two_subjects.json")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_consistent_ui_workflow_with_the_official_defaults(path, object_info):
    workflow = load_workflow(path)
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]) and workflow["last_link_id"] >= max(links)
    for node in workflow["nodes"]:
        for key in ("id", "type", "pos", "size", "inputs", "outputs", "widgets_values", "mode", "order"):
            assert key in node, (path.name, node["id"], key)
        if node["type"] in workflow_api.NOTE_TYPES:
            continue
        definition = object_info[node["type"]]
        assert len(node["widgets_values"]) == len(workflow_api.widget_slots(definition)), (path.name, node["type"])
        for slot, entry in enumerate(node["inputs"]):
            if entry["link"] is not None:
                link_id, origin, origin_slot, target, target_slot, kind = links[entry["link"]]
                assert (target, target_slot, kind) == (node["id"], slot, entry["type"]), (path.name, node["id"], entry)
                assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
                assert nodes[origin]["outputs"][origin_slot]["type"] == kind
            else:
                spec = definition["input"].get("required", {}).get(entry["name"])
                assert spec is None, f"{path.name}: node {node['id']} ({node['type']}) leaves required '{entry['name']}' open"
    for link_id, origin, origin_slot, target, target_slot, _ in workflow["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id

    real_models = {"SD1.5": SD15_REAL_MODELS, "FLUX": FLUX_REAL_MODELS, "FastComposer": FASTCOMPOSER_REAL_MODELS,
                   **LAMIC_REAL_MODELS}.get(defaults_of(path), REAL_MODELS)
    for node_type, name in real_models.items():
        assert [n["widgets_values"][0] for n in by_type(workflow, node_type)] == [name], (path.name, node_type)
    cfg, sampler_name, default_scale, default_steps = DEFAULTS[defaults_of(path)]
    prompt = workflow_to_prompt(workflow, object_info)
    layout_mod = pack("attention_patches.layout")
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] == "KSampler":
            assert (inputs["cfg"], inputs["sampler_name"]) == (cfg, sampler_name)
            if inputs["denoise"] == 1.0:
                assert inputs["steps"] == default_steps
            text = positive_text(prompt, node_id)
        if node["class_type"] == "MSP_ApplyMultiSubjectAttention":
            apply = inputs
    subjects = []
    ref = apply["subjects"]
    while ref is not None:
        subjects.insert(0, prompt[ref[0]]["inputs"]["phrase"])
        ref = prompt[ref[0]]["inputs"].get("subjects")
    for phrase in subjects:
        assert phrase in text, (path.name, phrase, text)
    if "layout" in apply:
        box_node = prompt[apply["layout"][0]]["inputs"]
        layout = layout_mod.make_layout(box_node["boxes"], box_node["width"], box_node["height"], box_node["preset"])
        assert len(layout.boxes) == len(subjects), path.name
        assert [b.label for b in layout_mod.parse_boxes(box_node["boxes"])] == subjects  # the canvas shows the phrases
    else:
        assert base_model(path) in ("SD1.5", "FLUX"), f"{path.name}: only SSR-Encoder and AnyStory act without a layout"
    if base_model(path) == "FLUX":
        assert apply["start_percent"] == 0.09  # the multi-subject demo's reference start
    parsed = pack("nodes.apply_attention").parse_subject_scales(apply.get("subject_scales", ""))
    scales = list(parsed) if parsed else [apply["scale"]] * len(subjects)
    assert scales in ([default_scale] * len(subjects), [0.6, 0.4]), (path.name, scales)
    if apply["auto_routing"]:
        assert apply["prompt"] == text and (apply["mask_threshold"], apply["start_step"]) == (0.5, 5)


FEATURES = {  # example -> (node type, how many), beyond the common graph
    "two_subjects": {"MSP_EncodeReference": 2, "MSP_RouterMaskPreview": 1},
    "subject_and_scene": {"MSP_EncodeReference": 2},
    "three_subjects": {"MSP_EncodeReference": 3},
    "controlnet_canny": {"ControlNetLoader": 1, "ControlNetApplyAdvanced": 1, "Canny": 1},
    "lora": {"LoraLoader": 1},
    "hires_fix": {"LatentUpscaleBy": 1, "KSampler": 2},
    "auto_routing": {"MSP_RouterMaskPreview": 1},
    "anystory_flux": {"MSP_EncodeReference": 2, "MSP_RouterMaskPreview": 1, "StyleModelLoader": 1, "FluxGuidance": 1,
                      "UNETLoader": 1, "DualCLIPLoader": 1},
    "fastcomposer_two_people": {"MSP_EncodeReference": 2, "MSP_RouterMaskPreview": 1, "UNETLoader": 1, "CLIPVisionLoader": 0},
    "ssr_two_subjects": {"MSP_EncodeReference": 2, "LoadImage": 2, "MSP_DrawLayoutBox": 0},
    "ssr_one_photo_two_subjects": {"MSP_EncodeReference": 2, "LoadImage": 1, "MSP_DrawLayoutBox": 1, "MSP_RouterMaskPreview": 1},
    "lamic_kontext_three_refs": {"MSP_EncodeReference": 3, "ReferenceLatent": 3, "T5TokenizerOptions": 1, "MSP_DrawLayoutBox": 1,
                                 "MSP_RouterMaskPreview": 1},
    "lamic_qwen_edit_two_refs": {"MSP_EncodeReference": 2, "TextEncodeQwenImageEditPlus": 2, "MSP_DrawLayoutBox": 1,
                                 "MSP_RouterMaskPreview": 1},
    "lamic_flux2_three_refs": {"MSP_EncodeReference": 3, "ReferenceLatent": 3, "MSP_DrawLayoutBox": 1, "MSP_RouterMaskPreview": 1},
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_contains_what_it_shows(path, object_info):
    workflow = load_workflow(path)
    for node_type, count in FEATURES[path.stem].items():
        assert len(by_type(workflow, node_type)) == count, (path.name, node_type)
    prompt = workflow_to_prompt(workflow, object_info)
    apply_id, apply = next((i, n["inputs"]) for i, n in prompt.items() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")
    samplers = [n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler"]
    assert all(s["model"] == [apply_id, 0] for s in samplers)  # every pass samples the patched MODEL
    assert apply["auto_routing"] is (path.stem == "auto_routing")
    if path.stem == "subject_and_scene":
        assert apply["subject_scales"] == "0.6, 0.4"
    if path.stem == "controlnet_canny":
        control = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ControlNetApplyAdvanced")
        assert prompt[control["image"][0]]["class_type"] == "Canny"
        assert all(prompt[s["positive"][0]]["class_type"] == "ControlNetApplyAdvanced" for s in samplers)
    if path.stem == "lora":
        lora_id = next(i for i, n in prompt.items() if n["class_type"] == "LoraLoader")
        assert apply["model"] == [lora_id, 0]
    if path.stem in SD15_EXAMPLES:  # each subject picked from its photo by a query
        encodes = [n["inputs"] for n in prompt.values() if n["class_type"] == "MSP_EncodeReference"]
        assert all(e["query"] and e["phrase"] in e["query"] for e in encodes)
        if path.stem == "ssr_one_photo_two_subjects":
            assert len({tuple(e["image"]) for e in encodes}) == 1 and all(e["subject_encoder"] == apply["subject_encoder"] for e in encodes)
    if path.stem == "hires_fix":
        second = next(s for s in samplers if s["denoise"] < 1.0)
        assert second["denoise"] == 0.5 and prompt[second["latent_image"][0]]["class_type"] == "LatentUpscaleBy"
    for preview in (n["inputs"] for n in prompt.values() if n["class_type"] == "MSP_RouterMaskPreview"):
        assert preview["routes"] == [apply_id, 1]
        assert prompt[preview["latent"][0]]["class_type"] == "KSampler"
        assert prompt[preview["image"][0]]["class_type"] == "VAEDecode"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_on_the_real_server(path, examples_server, object_info):
    prompt = runnable_prompt(load_workflow(path), object_info)
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    outputs = history["outputs"]
    saves = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
    previews = [i for i, n in prompt.items() if n["class_type"] == "MSP_RouterMaskPreview"]
    assert saves
    for node_id in saves:
        images = outputs[node_id]["images"]
        assert len(images) == 1 and images[0]["type"] == "output"
        saved = examples_server.base / "output" / images[0]["subfolder"] / images[0]["filename"]
        assert Image.open(saved).size == pixel_size(prompt, [node_id])
    for node_id in previews:
        images = outputs[node_id]["images"]
        assert images, f"{path.name}: Router Mask Preview showed nothing"
        sheet = view(examples_server, images[0])
        width, _ = pixel_size(prompt, prompt[node_id]["inputs"]["latent"])
        assert sheet.width >= 2 * width  # the routes at (at least) both UNet resolutions, side by side
    if any(n["class_type"] == "LoraLoader" for n in prompt.values()):
        assert "lora key not loaded" not in examples_server.log()
    if path.stem == "auto_routing":
        apply = next(n for n in prompt.values() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")
        assert apply["inputs"]["auto_routing"] is True and previews
        # the example asks for steps 10, 20 and the last; this run has only TEST_STEPS
        assert f"steps 10, 20 not shown: the last run recorded steps 1 to {TEST_STEPS}" in examples_server.log()


def test_a_workflow_saved_before_the_encoder_kinds_still_runs(examples_server, object_info):
    """Encode Reference saved with three widget values (no 'query'), Router Mask Preview with one (no 'layers'):
    the inputs added since take their defaults."""
    workflow = load_workflow(EXAMPLES_DIR / "two_subjects.json")
    for node in by_type(workflow, "MSP_EncodeReference"):
        node["widgets_values"] = node["widgets_values"][:3]
    for node in by_type(workflow, "MSP_RouterMaskPreview"):
        node["widgets_values"] = node["widgets_values"][:1]
    prompt = runnable_prompt(workflow, object_info)
    encoders = [n["inputs"] for n in prompt.values() if n["class_type"] == "MSP_EncodeReference"]
    assert len(encoders) == 2 and all("query" not in inputs and inputs["phrase"] for inputs in encoders)
    assert all("layers" not in n["inputs"] for n in prompt.values() if n["class_type"] == "MSP_RouterMaskPreview")
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]


@pytest.mark.parametrize("path", SAVED_WORKFLOWS, ids=lambda p: p.stem)
def test_an_example_saved_before_the_declared_capabilities_converts_as_today_and_runs(path, examples_server, object_info):
    """A saved workflow keeps loading: node ids and input names are stable, so the old file converts to today's
    example's prompt less the inputs added since, which take their defaults; and it runs."""
    saved = workflow_to_prompt(load_workflow(path), object_info)
    current = workflow_to_prompt(load_workflow(EXAMPLES_DIR / path.name), object_info)
    assert {i: n["class_type"] for i, n in saved.items()} == {i: n["class_type"] for i, n in current.items()}
    for node_id, node in current.items():
        added = set(node["inputs"]) - set(saved[node_id]["inputs"])
        definition = object_info[node["class_type"]]["input"]
        for name in added:
            spec = {**definition.get("required", {}), **definition.get("optional", {})}[name]
            assert node["inputs"][name] == spec[1]["default"], (path.name, node["class_type"], name)
        assert saved[node_id]["inputs"] == {k: v for k, v in node["inputs"].items() if k not in added}, (path.name, node_id)
    prompt = runnable_prompt(load_workflow(path), object_info)
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    image = history["outputs"][save]["images"][0]
    assert Image.open(examples_server.base / "output" / image["subfolder"] / image["filename"]).size == pixel_size(prompt, [save])
    preview = next(i for i, n in prompt.items() if n["class_type"] == "MSP_RouterMaskPreview")
    assert history["outputs"][preview]["images"], f"{path.name}: Router Mask Preview showed nothing"


def test_auto_routing_preview_shows_the_routes_the_model_used(examples_server, object_info):
    """With auto routing the preview adds the per-step routes to the layout's box routes: a larger sheet."""
    workflow = load_workflow(EXAMPLES_DIR / "auto_routing.json")
    sizes = {}
    for auto in (False, True):
        prompt = runnable_prompt(workflow, object_info)
        apply = next(n for n in prompt.values() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")
        apply["inputs"]["auto_routing"] = auto
        preview = next(n for n in prompt.values() if n["class_type"] == "MSP_RouterMaskPreview")
        preview["inputs"]["steps"] = "final"  # numbered steps exist only with auto routing
        history = examples_server.run(prompt)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        preview = next(i for i, n in prompt.items() if n["class_type"] == "MSP_RouterMaskPreview")
        sheet = view(examples_server, history["outputs"][preview]["images"][0])
        sizes[auto] = sheet.width * sheet.height
    assert sizes[True] > sizes[False]


def test_anystory_preview_shows_the_learned_routes_per_chosen_step_and_block(examples_server, object_info):
    """The FLUX example's preview: the whole-image panel plus one panel per chosen step (of the chosen blocks)."""
    prompt = runnable_prompt(load_workflow(EXAMPLES_DIR / "anystory_flux.json"), object_info)
    preview_id = next(i for i, n in prompt.items() if n["class_type"] == "MSP_RouterMaskPreview")
    preview = prompt[preview_id]["inputs"]
    sizes = {}
    for steps, layers in (("final", ""), ("1, final", "double_blocks.0, single_blocks.1")):
        preview.update(steps=steps, layers=layers)
        history = examples_server.run(prompt)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        sizes[steps] = view(examples_server, history["outputs"][preview_id]["images"][0]).size
    route_preview = pack("attention_patches.route_preview")
    width, height = pixel_size(prompt, prompt[preview_id]["inputs"]["latent"])
    scale = min(1.0, route_preview.MAX_PANEL_SIDE / max(width, height))
    panel_w, panel_h = round(width * scale), round(height * scale)
    # the whole-image panel and the learned routes of the last step side by side (the sheet at least as wide as its notes)
    assert sizes["final"][0] == max(2 * panel_w, route_preview.MIN_SHEET_WIDTH)
    assert sizes["1, final"][0] == sizes["final"][0]  # one resolution: three panels in a 2 x 2 grid...
    assert sizes["1, final"][1] > sizes["final"][1] + panel_h  # ...the third on a second row
    preview.update(steps="final", layers="single_blocks.99")
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "error"
    assert "single_blocks.99" in json.dumps(history["status"]) and "recorded layers" in json.dumps(history["status"])


@pytest.mark.parametrize("name, node_type, strengths", [
    ("controlnet_canny", "ControlNetApplyAdvanced", ("strength",)),
    ("lora", "LoraLoader", ("strength_model", "strength_clip")),
])
def test_controlnet_and_lora_take_part_beside_the_subjects(name, node_type, strengths, examples_server, object_info):
    """The example's ControlNet / LoRA really acts on the patched graph: at strength 0 the image differs."""
    import numpy as np

    pixels = []
    for off in (False, True):
        prompt = runnable_prompt(load_workflow(EXAMPLES_DIR / f"{name}.json"), object_info)
        if off:
            node = next(n for n in prompt.values() if n["class_type"] == node_type)
            node["inputs"].update({key: 0.0 for key in strengths})
        history = examples_server.run(prompt)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
        image = history["outputs"][save]["images"][0]
        pixels.append(np.asarray(Image.open(examples_server.base / "output" / image["subfolder"] / image["filename"]), dtype=np.int16))
    assert np.abs(pixels[0] - pixels[1]).mean() > 0.25  # same seed, same subjects: only the ControlNet / LoRA differs


def test_fastcomposer_example_fuses_the_people(examples_server, object_info):
    """The FastComposer example's people act: with no sampling step inside the fused window the image differs."""
    import numpy as np

    pixels = []
    for end in (1.0, 0.3):  # 3 steps (timesteps 999, 500, 0): at end_percent 0.3 no call is in the fused window
        prompt = shrink(demo.use_tiny_stand_ins(workflow_to_prompt(load_workflow(EXAMPLES_DIR / "fastcomposer_two_people.json"),
                                                                   object_info)), steps=3)
        next(n for n in prompt.values() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")["inputs"]["end_percent"] = end
        history = examples_server.run(prompt)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
        image = history["outputs"][save]["images"][0]
        pixels.append(np.asarray(Image.open(examples_server.base / "output" / image["subfolder"] / image["filename"]), dtype=np.int16))
    assert np.abs(pixels[0] - pixels[1]).max() > 0  # same seed on the CPU: without the people the image is bit-identical


# ------------------------------------------------------------------ invalid graphs


def without_input(workflow: dict, node_type: str, input_name: str) -> dict:
    """The workflow with one connection removed, as a user deleting the wire would leave it."""
    workflow = json.loads(json.dumps(workflow))
    node = by_type(workflow, node_type)[0]
    entry = next(i for i in node["inputs"] if i["name"] == input_name)
    link_id, entry["link"] = entry["link"], None
    workflow["links"] = [link for link in workflow["links"] if link[0] != link_id]
    for other in workflow["nodes"]:
        for output in other["outputs"]:
            if output.get("links") and link_id in output["links"]:
                output["links"].remove(link_id)
    return workflow


def with_link(workflow: dict, origin: dict, origin_slot: int, target: dict, input_name: str) -> dict:
    """``workflow`` with a wire added from ``origin``'s output to ``target``'s input, as the frontend saves it (in place)."""
    link_id = workflow["last_link_id"] = workflow["last_link_id"] + 1
    slot = next(i for i, entry in enumerate(target["inputs"]) if entry["name"] == input_name)
    target["inputs"][slot]["link"] = link_id
    output = origin["outputs"][origin_slot]
    output["links"] = (output.get("links") or []) + [link_id]
    workflow["links"].append([link_id, origin["id"], origin_slot, target["id"], slot, output["type"]])
    return workflow


@pytest.mark.parametrize("name, why", [
    ("two_subjects", "MS-Diffusion encodes each phrase with SDXL's CLIP-L"),
    ("ssr_one_photo_two_subjects", "SSR-Encoder encodes the query"),
    ("fastcomposer_two_people", "FastComposer finds each person's word"),
])
def test_a_kind_that_needs_clip_names_the_unconnected_clip_input_on_the_encoding_node(name, why, examples_server, object_info):
    """Encode Reference's clip is optional (AnyStory does not use it): the kinds that need it say so, on the node that
    encodes (Encode Reference with subject_encoder connected, else Apply), and the next prompt runs."""
    workflow = without_input(load_workflow(EXAMPLES_DIR / f"{name}.json"), "MSP_EncodeReference", "clip")
    prompt = runnable_prompt(workflow, object_info)
    encode_id = str(by_type(workflow, "MSP_EncodeReference")[0]["id"])
    assert "clip" not in prompt[encode_id]["inputs"]
    history = examples_server.run(prompt)  # accepted at queue time: nothing required is missing
    assert history["status"]["status_str"] == "error"
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    encodes_there = "subject_encoder" in prompt[encode_id]["inputs"]
    assert error["node_type"] == ("MSP_EncodeReference" if encodes_there else "MSP_ApplyMultiSubjectAttention"), name
    if encodes_there:
        assert error["node_id"] == encode_id
    message = error["exception_message"]
    assert why in message and "Encode Reference's 'clip' input is not connected: connect the" in message
    assert "checkpoint's CLIP (the CLIP output of Load Checkpoint) to Encode Reference's clip" in message
    again = examples_server.run(runnable_prompt(load_workflow(EXAMPLES_DIR / f"{name}.json"), object_info))
    assert again["status"]["status_str"] == "success"


def test_an_anystory_workflow_saved_with_clip_wired_still_converts_and_runs(examples_server, object_info):
    """Before clip became optional the AnyStory example wired the FLUX CLIP into Encode Reference: such a saved
    workflow converts (inputs by name) and runs; the example itself leaves clip empty."""
    workflow = load_workflow(EXAMPLES_DIR / "anystory_flux.json")
    encodes = by_type(workflow, "MSP_EncodeReference")
    assert all(entry["link"] is None for node in encodes for entry in node["inputs"] if entry["name"] == "clip")
    dual_clip = by_type(workflow, "DualCLIPLoader")[0]
    for node in encodes:
        with_link(workflow, dual_clip, 0, node, "clip")
    prompt = runnable_prompt(workflow, object_info)
    assert [prompt[str(node["id"])]["inputs"]["clip"] for node in encodes] == [[str(dual_clip["id"]), 0]] * len(encodes)
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]


def test_a_removed_subjects_wire_is_a_node_error_and_the_server_keeps_serving(examples_server, object_info):
    workflow = without_input(load_workflow(EXAMPLES_DIR / "two_subjects.json"), "MSP_ApplyMultiSubjectAttention", "subjects")
    prompt = runnable_prompt(workflow, object_info)
    apply_id = next(i for i, n in prompt.items() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")
    assert "subjects" not in prompt[apply_id]["inputs"]
    with pytest.raises(PromptRefused) as error:
        examples_server.run(prompt)
    assert error.value.status == 400
    node_errors = error.value.body["node_errors"]
    assert node_errors[apply_id]["class_type"] == "MSP_ApplyMultiSubjectAttention"
    assert any(e["type"] == "required_input_missing" and "subjects" in json.dumps(e) for e in node_errors[apply_id]["errors"])
    again = examples_server.run(runnable_prompt(load_workflow(EXAMPLES_DIR / "two_subjects.json"), object_info))
    assert again["status"]["status_str"] == "success"


def test_a_box_count_mismatch_is_an_execution_error_naming_the_node(examples_server, object_info):
    prompt = runnable_prompt(load_workflow(EXAMPLES_DIR / "three_subjects.json"), object_info)
    layout = next(n for n in prompt.values() if n["class_type"] == "MSP_DrawLayoutBox")
    layout["inputs"]["preset"] = "two subjects"  # 3 subjects, 2 boxes
    history = examples_server.run(prompt)
    assert history["status"]["status_str"] == "error"
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "MSP_ApplyMultiSubjectAttention"
    assert "3 subject(s)" in error["exception_message"] and "2 box(es)" in error["exception_message"]
    assert examples_server.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"
    again = examples_server.run(runnable_prompt(load_workflow(EXAMPLES_DIR / "three_subjects.json"), object_info))
    assert again["status"]["status_str"] == "success"


# ------------------------------------------------------------------ the real frontend agrees with the converter


LOAD_AND_CONVERT = """
const [workflow] = args;
await window.app.loadGraphData(workflow, true, true, 'example');
const missing = workflow.nodes.map((n) => n.type)
  .filter((t) => !['MarkdownNote', 'Note'].includes(t) && !window.LiteGraph.registered_node_types[t]);
const prompt = await window.app.graphToPrompt();
return {output: prompt.output, saved: window.app.graph.serialize(), missing};
"""


@browser_support.requires_browser
def test_the_real_frontend_loads_every_example_and_converts_it_as_the_converter_does(examples_server, object_info, tmp_path):
    with browser_support.browser_session(examples_server, tmp_path / "profile") as driver:
        for path in EXAMPLES:
            workflow = load_workflow(path)
            result = browser_support.js(driver, LOAD_AND_CONVERT, workflow)
            assert result["missing"] == [], path.name
            ours = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in workflow_to_prompt(workflow, object_info).items()}
            theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["output"].items()}
            assert ours == theirs, path.name
            saved = {n["id"]: n.get("widgets_values") for n in result["saved"]["nodes"]}
            assert saved == {n["id"]: n["widgets_values"] for n in workflow["nodes"]}, f"{path.name}: the frontend changed widget values"


SHOW_EXAMPLE = """
const [workflow] = args;
await window.app.loadGraphData(workflow, true, true, 'example');
window.app.canvas.setDirty(true, true);
for (let i = 0; i < 3; i++) await new Promise((r) => requestAnimationFrame(r));
const canvas = window.app.canvas.canvas, rect = canvas.getBoundingClientRect(), ds = window.app.canvas.ds;
const screen = (x, y) => [rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y + ds.offset[1]) * ds.scale];
const titleHeight = window.LiteGraph.NODE_TITLE_HEIGHT;
const covered = [];
const spots = [
  ...window.app.graph.groups.map((g) => [`group '${g.title}'`, g.pos[0] + 12, g.pos[1] + 12]),
  ...window.app.graph.nodes.map((n) => [`node ${n.id} (${n.type})`, n.pos[0] + 12, n.pos[1] - titleHeight / 2]),
];
for (const [what, x, y] of spots) {
  const [sx, sy] = screen(x, y);
  if (sx < 0 || sy < 0 || sx >= window.innerWidth || sy >= window.innerHeight) continue;  // scrolled out, not covered
  const found = document.elementFromPoint(sx, sy);
  if (found !== canvas) covered.push([what, Math.round(sx), Math.round(sy), found ? `${found.tagName}.${found.className}` : null]);
}
const view = {scale: ds.scale, offset: [...ds.offset]};
const box = window.app.graph.nodes.find((n) => n.type === 'MSP_DrawLayoutBox');
if (!box) return {view, covered};
ds.offset = [200 / ds.scale - box.pos[0], 200 / ds.scale - box.pos[1]];  // the box editor on screen, to measure it
window.app.canvas.setDirty(true, true);
for (let i = 0; i < 3; i++) await new Promise((r) => requestAnimationFrame(r));
const right = screen(box.pos[0] + box.size[0], 0)[0];
const field = (name) => document.querySelector(`.msp-layout-${name}`)?.getBoundingClientRect();
const label = field('label'), y2 = field('y2');
return {view, covered, labelWidth: label && label.width / ds.scale,
        y2Right: y2 && y2.right, nodeRight: right};
"""


@browser_support.requires_browser
def test_the_examples_open_readable_in_the_real_frontend(examples_server, tmp_path):
    """Saved view: nothing of the top row under the menu or tab bar; the box editor's fields fit its node."""
    with browser_support.browser_session(examples_server, tmp_path / "profile") as driver:
        for path in EXAMPLES:
            workflow = load_workflow(path)
            shown = browser_support.js(driver, SHOW_EXAMPLE, workflow)
            assert shown["view"] == workflow["extra"]["ds"], path.name  # the saved view is the one opened
            assert shown["covered"] == [], f"{path.name}: hidden under the frontend's bars: {shown['covered']}"
            if by_type(workflow, "MSP_DrawLayoutBox"):
                assert shown["labelWidth"] >= 120, (path.name, shown)  # room to type a phrase
                assert shown["y2Right"] <= shown["nodeRight"], (path.name, shown)  # x1..y2 inside the node


def test_every_example_has_the_thumbnail_the_template_browser_asks_for(examples_server, tmp_path):
    """The frontend requests /api/workflow_templates/<pack>/<name>.jpg; the committed files are the script's output."""
    import numpy as np

    from scripts import make_thumbnails

    assert make_thumbnails.main(["--out", str(tmp_path)]) == 0
    for path in EXAMPLES:
        committed = EXAMPLES_DIR / f"{path.stem}.jpg"
        assert committed.exists(), f"run .venv/bin/python -m scripts.make_thumbnails: {committed.name} is missing"
        served = Image.open(io.BytesIO(examples_server.read(f"/api/workflow_templates/{PACK_LINK}/{path.stem}.jpg")))
        assert served.format == "JPEG" and served.size == (make_thumbnails.SIZE, make_thumbnails.SIZE)
        assert committed.stat().st_size < 40_000  # small
        fresh = np.asarray(Image.open(tmp_path / committed.name), dtype=np.int16)
        assert np.abs(np.asarray(served, dtype=np.int16) - fresh).mean() < 1.0, f"{committed.name} is stale: run .venv/bin/python -m scripts.make_thumbnails"


NODE_TITLE_HEIGHT = 30  # LiteGraph's, in canvas units
GROUP_TITLE_HEIGHT = 34  # a group title at font size 24


def rectangle(node: dict) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 of a node with its title bar."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - NODE_TITLE_HEIGHT, x + w, y + h


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_layout_nothing_hides_anything(path):
    workflow = load_workflow(path)
    nodes = workflow["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not overlap(rectangle(a), rectangle(b)), (path.name, a["id"], b["id"])
    for group in workflow["groups"]:
        x, y, w, h = group["bounding"]
        title_bar = (x, y, x + w, y + GROUP_TITLE_HEIGHT)
        for node in nodes:
            assert not overlap(rectangle(node), title_bar), (path.name, group["title"], node["id"])
    for layout_box in by_type(workflow, "MSP_DrawLayoutBox"):
        assert layout_box["size"][0] >= 540, path.name  # label field + x1, y1, x2, y2 in one row


def model_entries(workflow: dict) -> list[dict]:
    """Every model file a workflow needs with its folder and URL (demo.model_files: each loader's file with its node's
    properties.models or properties.manual_models entry, plus the workflow's own companion files).
    A file without an entry has no URL, which the tests below refuse."""
    nodes = {str(node["id"]): node for node in workflow["nodes"]}
    return [{"directory": f.folder, "name": f.name, "url": f.url} for f in demo.model_files(workflow, nodes)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_model_an_example_loads_is_listed_for_the_missing_models_dialog(path, examples_server):
    """Every file an example loads has an entry (in a folder the server knows, keyed by URL)."""
    folders = {entry["name"] for entry in examples_server.get("/api/experiment/models")}
    workflow = load_workflow(path)
    for node in workflow["nodes"]:  # every widget that names a model file has its entry
        listed = {m["name"] for key in ("models", model_metadata.MANUAL_KEY) for m in node.get("properties", {}).get(key, [])}
        for value in node["widgets_values"]:
            assert not (isinstance(value, str) and value.endswith(demo.MODEL_FILE_SUFFIXES)) or value in listed, (path.name, value)
    entries = model_entries(workflow)
    for entry in entries:
        assert entry["url"].startswith("https://") and entry["directory"] in folders, (path.name, entry)
    assert len({e["url"] for e in entries}) == len(entries), path.name  # the dialog keeps one entry per URL


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_dialog_metadata_holds_only_files_the_frontend_downloads(path):
    """Frontend 1.32.9 shows a red error for any other entry (.bin, Google Drive, the converter's files): those are
    kept under manual_models, which it ignores (scripts/model_metadata.py moves each entry to its key)."""
    workflow = load_workflow(path)
    holders = [(node["properties"], node["properties"]) for node in workflow["nodes"] if node.get("properties")]
    for frontend, manual in [*holders, (workflow, workflow.get("extra", {}))]:
        for entry in frontend.get("models", []):
            assert model_metadata.frontend_downloads(entry), f"{path.name}: {entry['name']}: run scripts/model_metadata.py"
        for entry in manual.get(model_metadata.MANUAL_KEY, []):
            assert not model_metadata.frontend_downloads(entry), f"{path.name}: {entry['name']}: run scripts/model_metadata.py"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_note_links_every_file_it_needs(path):
    """The dialog offers no download for .bin releases and converted files: the note links each file."""
    workflow = load_workflow(path)
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote")
    for entry in model_entries(workflow):
        assert f"[`{entry['name']}`]({entry['url']})" in notes, (path.name, entry["name"])


@pytest.fixture(scope="module")
def server_without_models(tmp_path_factory):
    """A fresh server with no model files, as a newcomer's first start."""
    from devkit.server import ComfyServer

    server = ComfyServer(tmp_path_factory.mktemp("no_models"))
    server.start()
    yield server
    server.stop()


LOAD_WITH_MISSING_MODELS = """
const [workflow] = args;
const app = window.comfyAPI.app.app;
await app.extensionManager.setting.set("Comfy.Workflow.ShowMissingModelsWarning", true);
await app.loadGraphData(workflow);
"""
MISSING_MODELS_SHOWN = """
return [...document.querySelectorAll(".comfy-missing-models li")].map((li) => ({
  file: li.querySelector("span[title]")?.innerText.trim(), url: li.querySelector("span[title]")?.title,
  download: [...li.querySelectorAll("button")].some((b) => b.innerText.startsWith("Download") && !b.disabled),
  error: !!li.querySelector(".p-message, .file-error"), text: li.innerText,
}));
"""
# Each Load Image's picture as the frontend shows it: loaded (the node's image element) and no broken-image placeholder.
LOAD_IMAGES_SHOWN = """
const nodes = window.app.graph.nodes.filter((n) => n.type === "LoadImage");
return {images: nodes.map((n) => ({name: n.widgets.find((w) => w.name === "image").value,
                                   loaded: !!(n.imgs?.[0]?.complete && n.imgs[0].naturalWidth > 0)})),
        failed: document.body.innerText.includes("Image failed to load")};
"""


@browser_support.requires_browser
@pytest.mark.parametrize("vue_nodes", [False, True], ids=["litegraph", "nodes2"])
def test_the_missing_models_dialog_lists_every_file_of_every_example(server_without_models, tmp_path, vue_nodes):
    """Loaded in the real frontend on a fresh server without models, each example's dialog lists the files the
    frontend can download, each with its URL and a working Download button, and no red error (the .bin releases and
    converted files are in the note); the example's reference pictures, shipped with the pack, load."""
    with browser_support.browser_session(server_without_models, tmp_path / "profile", vue_nodes=vue_nodes) as driver:
        for path in EXAMPLES:
            entries = {f"{e['directory']} / {e['name']}": e for e in model_entries(load_workflow(path))
                       if model_metadata.frontend_downloads(e)}
            browser_support.js(driver, LOAD_WITH_MISSING_MODELS, load_workflow(path))
            shown = browser_support.wait_for(lambda: browser_support.js(driver, MISSING_MODELS_SHOWN),
                                             message=f"the Missing Models dialog of {path.name}")
            assert {(row["file"], row["url"]) for row in shown} == {(k, e["url"]) for k, e in entries.items()}, path.name
            for row in shown:
                assert row["download"] and not row["error"], (path.name, row)
            driver.execute_script("document.querySelector('.p-dialog .p-dialog-close-button').click()")
            browser_support.wait_for(lambda: not driver.execute_script("return document.querySelector('.p-dialog')"),
                                     message="the dialog closed")
            images = browser_support.wait_for(
                lambda: (lambda shown: shown if all(i["loaded"] for i in shown["images"]) else None)(
                    browser_support.js(driver, LOAD_IMAGES_SHOWN)),
                message=f"the reference pictures of {path.name}")
            assert not images["failed"], (path.name, images)


# ------------------------------------------------------------------ the converter on a hand-made workflow

OBJECT_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP"], "output_name": ["MODEL", "CLIP"]},
    "Sampler": {
        "input": {
            "required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
                         "steps": ["INT", {"default": 20}], "text": ["STRING", {"multiline": True}],
                         "mode": ["COMBO", {"options": ["a", "b"]}]},
            "optional": {"latent": ["LATENT", {}], "strength": ["FLOAT", {"default": 1.0}],
                         "label": ["STRING", {"forceInput": True}], "enabled": ["BOOLEAN", {"default": True}]},
        },
        "input_order": {"required": ["model", "seed", "steps", "text", "mode"], "optional": ["latent", "strength", "label", "enabled"]},
        "output": ["LATENT"], "output_name": ["LATENT"],
    },
    # no input_order: the definition's own key order is used
    "ImageLoader": {"input": {"required": {"image": [["x.png"], {"image_upload": True}], "channel": [["rgb", "alpha"]]}},
                    "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "Text": {"input": {"required": {"value": ["STRING", {}]}}, "output": ["STRING"], "output_name": ["STRING"]},
    "Passthrough": {"input": {"required": {"model": ["MODEL", {}]}}, "output": ["MODEL"], "output_name": ["MODEL"]},
}


def node(node_id, kind, widgets, inputs=(), outputs=(), mode=0, **extra):
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0, "mode": mode,
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {},
            "widgets_values": widgets, **extra}


def hand_made_workflow() -> dict:
    return {
        "last_node_id": 9, "last_link_id": 7, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            node(1, "Loader", ["b.safetensors"], outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]},
                                                         {"name": "CLIP", "type": "CLIP", "links": None}]),
            node(2, "Reroute", [], inputs=[{"name": "", "type": "*", "link": 1}], outputs=[{"name": "", "type": "MODEL", "links": [2]}]),
            node(3, "Passthrough", [], mode=4, inputs=[{"name": "model", "type": "MODEL", "link": 2}],
                 outputs=[{"name": "MODEL", "type": "MODEL", "links": [3]}]),
            node(4, "Sampler", [7, "randomize", 12, "hello", "b", 0.5, False],
                 inputs=[{"name": "model", "type": "MODEL", "link": 3},
                         {"name": "latent", "type": "LATENT", "link": None, "shape": 7},
                         {"name": "steps", "type": "INT", "link": 4, "widget": {"name": "steps"}},
                         {"name": "text", "type": "STRING", "link": 5, "widget": {"name": "text"}},
                         {"name": "label", "type": "STRING", "link": 6}],
                 outputs=[{"name": "LATENT", "type": "LATENT", "links": None}], title="My sampler"),
            node(5, "PrimitiveNode", [25, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [4], "widget": {"name": "steps"}}]),
            node(6, "Text", ["from a node"], outputs=[{"name": "STRING", "type": "STRING", "links": [5, 6]}]),
            node(7, "ImageLoader", ["x.png", "alpha", "image"], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": None}]),
            node(8, "MarkdownNote", ["# notes are dropped"]),
            node(9, "ImageLoader", ["x.png", "rgb"], mode=2, outputs=[{"name": "IMAGE", "type": "IMAGE", "links": None}]),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"], [4, 5, 0, 4, 2, "INT"],
                  [5, 6, 0, 4, 3, "STRING"], [6, 6, 0, 4, 4, "STRING"]],
    }


def test_converter_maps_widgets_links_converted_widgets_and_frontend_only_nodes():
    prompt = workflow_to_prompt(hand_made_workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "4", "6", "7"}  # reroute, bypassed, primitive, note and muted nodes are gone
    assert prompt["1"] == {"class_type": "Loader", "inputs": {"ckpt_name": "b.safetensors"}, "_meta": {"title": "Loader"}}
    sampler = prompt["4"]
    assert sampler["_meta"]["title"] == "My sampler"
    assert sampler["inputs"] == {
        "model": ["1", 0],          # through the reroute and the bypassed node
        "seed": 7,                  # "randomize" is the seed's control_after_generate value, not an input
        "steps": 25,                # converted widget fed by a primitive: its value is inlined
        "text": ["6", 0],           # converted widget fed by a node: the link wins over the stored "hello"
        "mode": "b",
        "strength": 0.5,            # optional widgets are sent
        "label": ["6", 0],          # forceInput STRING: a socket, never a widget value
        "enabled": False,
    }                               # the unconnected optional 'latent' socket is left out
    assert prompt["7"]["inputs"] == {"image": "x.png", "channel": "alpha"}  # the upload button's value is skipped


def test_converter_accepts_the_short_and_named_widget_forms():
    definition = OBJECT_INFO["Sampler"]
    full = workflow_api.map_widget_values(definition, [1, "fixed", 2, "t", "a", 0.1, True], "n")
    short = workflow_api.map_widget_values(definition, [1, 2, "t", "a", 0.1, True], "n")  # saved without the control value
    named = workflow_api.map_widget_values(definition, {"seed": 1, "steps": 2, "text": "t", "mode": "a", "strength": 0.1,
                                                        "enabled": True, "unknown": 3}, "n")
    assert full == short == named == {"seed": 1, "steps": 2, "text": "t", "mode": "a", "strength": 0.1, "enabled": True}
    assert workflow_api.map_widget_values(OBJECT_INFO["ImageLoader"], ["x.png", "rgb"], "n") == {"image": "x.png", "channel": "rgb"}


def test_converter_fallback_for_values_that_fit_neither_form(caplog):
    definition = OBJECT_INFO["Sampler"]
    # values missing (an older node version): the control value is recognised, the rest is taken in order
    older = workflow_api.map_widget_values(definition, [1, "fixed", 2, "t", "a"], "n")
    assert older == {"seed": 1, "steps": 2, "text": "t", "mode": "a"}
    assert "no stored value for strength, enabled" in caplog.text
    # a value left over, no control value stored
    newer = workflow_api.map_widget_values(definition, [1, 2, "t", "a", 0.1, True, "extra", 9], "n")
    assert newer == {"seed": 1, "steps": 2, "text": "t", "mode": "a", "strength": 0.1, "enabled": True}
    assert "2 widget value(s) left over" in caplog.text


def test_links_stored_as_objects_and_link_origins_through_reroutes():
    workflow = hand_made_workflow()
    as_objects = dict(workflow, links=[{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3],
                                        "target_slot": l[4], "type": l[5]} for l in workflow["links"]])
    assert workflow_to_prompt(as_objects, OBJECT_INFO) == workflow_to_prompt(workflow, OBJECT_INFO)
    assert workflow_api.link_origin(workflow, 3) == "1"  # link 3 leaves the bypassed node, fed through a reroute
    assert workflow_api.link_origin(workflow, 4) is None  # a primitive's value, not a node


def test_demo_labels_a_reference_by_its_phrase_through_a_reroute():
    workflow = load_workflow(EXAMPLES_DIR / "two_subjects.json")
    encode = next(n for n in workflow["nodes"] if n["type"] == "MSP_EncodeReference")
    image_input = next(i for i in encode["inputs"] if i["name"] == "image")
    link = next(l for l in workflow["links"] if l[0] == image_input["link"])
    reroute_id, new_link = max(n["id"] for n in workflow["nodes"]) + 1, max(l[0] for l in workflow["links"]) + 1
    workflow["nodes"].append({"id": reroute_id, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": link[0]}],
                              "outputs": [{"name": "", "type": "IMAGE", "links": [new_link]}]})
    workflow["links"].append([new_link, reroute_id, 0, link[3], link[4], "IMAGE"])
    link[3], link[4] = reroute_id, 0
    image_input["link"] = new_link
    _, images = demo.workflow_files(workflow)
    assert encode["widgets_values"][0] in images  # labelled 'dog'/'cat', so --subject PHRASE=PATH finds it


def test_converter_errors_name_the_node():
    workflow = hand_made_workflow()
    workflow["nodes"][0]["type"] = "NotInstalled"
    with pytest.raises(WorkflowError, match=r"node 1 \(NotInstalled\).*custom-node pack"):
        workflow_to_prompt(workflow, OBJECT_INFO)
    workflow = hand_made_workflow()
    workflow["links"] = workflow["links"][1:]
    with pytest.raises(WorkflowError, match=r"node 4 \(Sampler, 'My sampler'\), input 'model': link 1 is not"):
        workflow_to_prompt(workflow, OBJECT_INFO)
    with pytest.raises(WorkflowError, match="subgraphs"):
        workflow_to_prompt({**hand_made_workflow(), "definitions": {"subgraphs": [{"id": "x"}]}}, OBJECT_INFO)


def test_converter_command_line(tmp_path):
    (tmp_path / "workflow.json").write_text(json.dumps(hand_made_workflow()))
    (tmp_path / "object_info.json").write_text(json.dumps(OBJECT_INFO))
    result = subprocess.run([sys.executable, str(PACK_ROOT / "scripts" / "workflow_api.py"), str(tmp_path / "workflow.json"),
                             "--object-info", str(tmp_path / "object_info.json")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == workflow_to_prompt(hand_made_workflow(), OBJECT_INFO)
