"""Parity with the official FastComposer modules (goldens), through the pack's own code paths, fp32.

Every size, count and case name comes from the golden set's cases.json.
"""

from __future__ import annotations

import re

import pytest
import torch

from fastcomposer.fastcomposer_support import encode_ids, fastcomposer_encoder, sd15_clip
from devkit.helpers import GOLDEN_TOLERANCE, assert_close
from devkit.pack import pack

TOLERANCE = GOLDEN_TOLERANCE
WINDOW_TOLERANCE = 1e-6  # cases.json rounds the percent windows to 6 decimals
pytestmark = pytest.mark.golden

preprocess = pack("models.fastcomposer.preprocess")
delay = pack("models.fastcomposer.delay")
loader = pack("models.fastcomposer.loader")
fusion_patch = pack("attention_patches.kinds.fastcomposer.fusion_patch")
tokens = pack("attention_patches.kinds.fastcomposer.tokens")


@pytest.fixture(scope="module")
def sd15_tokenizer():
    """The SD1.5 tokenizer ComfyUI ships (comfy/sd1_tokenizer)."""
    import comfy.sd1_clip

    return comfy.sd1_clip.SD1Tokenizer()


@pytest.fixture(scope="module")
def sd15_model_sampling():
    import comfy.model_sampling
    import comfy.supported_models

    return comfy.model_sampling.ModelSamplingDiscrete(comfy.supported_models.SD15({"context_dim": 768}))


@pytest.fixture(scope="module")
def fc(golden_set):
    return golden_set("fastcomposer")


def as_image(chw_uint8: torch.Tensor) -> torch.Tensor:
    """A uint8 CHW reference as ComfyUI's IMAGE [1, H, W, 3] (what Load Image gives for an 8-bit file)."""
    return (chw_uint8.permute(1, 2, 0).float() / 255.0)[None]


@pytest.fixture(scope="module")
def image_case(fc):
    tensors = fc.tensors("image_encoder")
    postfuse = {k: v for k, v in fc.tensors("fusion").items() if k.startswith("postfuse_module.")}
    weights = {k: v for k, v in tensors.items() if k.startswith("image_encoder.")} | postfuse
    return tensors, weights, fc.cases["image_encoder"]


def test_reference_preprocessing(image_case):
    tensors, _, spec = image_case
    assert spec["resolutions"], "cases.json lists no object resolution"
    for name, res in spec["resolutions"].items():
        resolution = res["object_resolution"]
        pixels = []
        for k in range(spec["num_refs"]):
            image = preprocess.to_uint8_chw(as_image(tensors[f"in.ref{k}"])[0])
            assert torch.equal(image, tensors[f"in.ref{k}"])
            padded = preprocess.pad_to_square(image)
            assert torch.equal(padded, tensors[f"res{name}.padded{k}"]), f"res{name}.padded{k}"
            resized = preprocess.resize_uint8(padded, resolution)
            assert torch.equal(resized, tensors[f"res{name}.resized_uint8"][k]), f"res{name}.resized_uint8[{k}]"
            assert torch.equal(resized, tensors[f"res{name}.resized_uint8_floatpath"][k])
            pixels.append(preprocess.object_pixels(image, resolution))
        assert_close(torch.stack(pixels), tensors[f"res{name}.pixels"], f"res{name}.pixels")
        vision = preprocess.vision_input(torch.stack(pixels), spec["image_size"])
        assert_close(vision, tensors[f"res{name}.vision_input"], f"res{name}.vision_input")


def test_segment_background_replacement(image_case):
    """Training's cut-out (background from another image inside the subject's bbox), through the pack's masking."""
    tensors, _, spec = image_case
    segment = spec["segment"]
    keep = tensors["segment.in.segmap"] == segment["id"]
    replaced = preprocess.replace_background(tensors["segment.in.image"], keep[None], tensors["segment.in.background"])
    x1, y1, x2, y2 = tensors["segment.in.bbox"].tolist()
    cropped = replaced[:, y1:y2, x1:x2]
    assert list(cropped.shape) == segment["out_shape"]
    assert torch.equal(cropped, tensors["segment.out"])


def test_image_encoder_embeddings(image_case):
    """Pooled output and object embedding of every reference, through the encoder's own preprocessing."""
    tensors, weights, spec = image_case
    vision = spec["vision_config"]
    for name, res in spec["resolutions"].items():
        encoder = fastcomposer_encoder(weights, vision["num_attention_heads"], res["object_resolution"])
        assert encoder.vision["image_size"] == spec["image_size"] == vision["image_size"]
        assert encoder.vision["num_hidden_layers"] == vision["num_hidden_layers"]
        assert encoder.embed_dim == spec["projection_dim"]
        with torch.no_grad():
            pooled = encoder.image_encoder.vision_model(tensors[f"res{name}.vision_input"])[2]
        assert_close(pooled, tensors[f"res{name}.pooled"], f"res{name}.pooled")
        embeds = torch.cat([encoder.object_embeddings(as_image(tensors[f"in.ref{k}"])) for k in range(spec["num_refs"])])
        assert_close(embeds, tensors[f"res{name}.object_embeds"].reshape(spec["num_refs"], -1), f"res{name}.object_embeds")


def postfuse_from(tensors, prefix="postfuse_module."):
    return loader.build_postfuse({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def test_fusion_function(fc):
    tensors = fc.tensors("fusion")
    module = postfuse_from(tensors)
    text, objects = tensors["fuse_fn.in.text"], tensors["fuse_fn.in.object"]
    with torch.no_grad():
        mlp1 = module.mlp1(torch.cat([text, objects], dim=-1))
        assert_close(mlp1, tensors["fuse_fn.mlp1"], "mlp1")
        assert_close(module.mlp2(mlp1 + text), tensors["fuse_fn.mlp2"], "mlp2")
        assert_close(module.fuse(text, objects), tensors["fuse_fn.out"], "fuse")


def test_fusion_cases(fc):
    """Every fusion case: the official batch rule, and the sampling-time rule row by row (other tokens bit-exact)."""
    tensors = fc.tensors("fusion")
    module = postfuse_from(tensors)
    cases = fc.cases["fusion"]["cases"]
    assert cases, "cases.json lists no fusion case"
    for name, case in cases.items():
        text, objects = tensors[f"{name}.in.text_embeds"], tensors[f"{name}.in.object_embeds"]
        mask, counts = tensors[f"{name}.in.image_token_mask"], tensors[f"{name}.in.num_objects"]
        with torch.no_grad():
            out = module(text, objects, mask, counts)
        assert_close(out, tensors[f"{name}.out"], name)
        assert torch.equal(out[~mask], text[~mask])
        for b, positions in enumerate(case["subject_positions"]):
            with torch.no_grad():
                row = fusion_patch.augmented_context(module, text[b:b + 1], tuple(positions), objects[b, : len(positions), 0])
            assert_close(row[0], tensors[f"{name}.out"][b], f"{name} row {b}")
            assert torch.equal(row[0][~mask[b]], text[b][~mask[b]])


def test_text_encoder_and_chain(fc):
    """ComfyUI's SD1.5 CLIP (layer "last") reproduces the official text encoder; fused after it = the official chain."""
    tensors = fc.tensors("text_encoder")
    spec = fc.cases["text_encoder"]
    text_weights = {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    clip = sd15_clip(text_weights, spec["config"]["num_attention_heads"])
    for b in range(tensors["in.input_ids"].shape[0]):
        assert_close(encode_ids(clip, tensors["in.input_ids"][b].tolist()), tensors["out.last_hidden_state"][b:b + 1], f"row {b}")
    module = postfuse_from(fc.tensors("fusion"))
    positions = tuple(spec["chain_subject_positions"])
    assert tensors["chain.in.image_token_mask"][0].nonzero().flatten().tolist() == list(positions)
    hidden = encode_ids(clip, tensors["in.input_ids"][0].tolist())
    with torch.no_grad():
        chained = fusion_patch.augmented_context(module, hidden, positions, tensors["chain.in.object_embeds"][0, :, 0])
    assert_close(chained, tensors["chain.out"], "chain")


def marker_words(prompt: str, marker: str) -> list[str | None]:
    """The word just before each marker (None when the marker opens the prompt): the phrase a user gives."""
    pieces = prompt.split(marker)
    words = []
    for before in pieces[:-1]:
        found = re.findall(r"[^\W_]+", before.split(marker)[-1])
        words.append(found[-1] if found else None)
    return words


def test_token_positions(fc, sd15_tokenizer):
    """Every prompt case: ComfyUI's tokens of the marker-free prompt are the official ids, and each person's
    phrase (the word before its marker) lands on the official subject position."""
    cases = fc.cases["prompt_processing"]["cases"]
    assert cases, "cases.json lists no prompt case"
    checked = 0
    for case in cases:
        chunks = sd15_tokenizer.clip_l.tokenize_with_weights(case["text_only_prompt"])
        assert [t for t, _w in chunks[0]] == case["text_only_ids_77"], case["prompt"]
        words = marker_words(case["prompt"], case["marker"])
        assert len(words) == case["markers_in_prompt"]
        if None in words:  # a marker opening the prompt flags BOS: no word names that person
            assert case["subject_positions"] == [0]
            continue
        positions = tokens.subject_token_positions(sd15_tokenizer, case["text_only_prompt"], words)
        assert sorted(set(positions)) == case["subject_positions"], case["prompt"]
        decoded = [sd15_tokenizer.clip_l.tokenizer.convert_ids_to_tokens(case["clean_ids_77"][p]) for p in positions]
        assert decoded == case["subject_tokens"]
        checked += 1
    assert checked, "no prompt case had a word before each marker"


def test_missing_phrase_is_a_named_error(sd15_tokenizer):
    with pytest.raises(tokens.PhraseNotFoundError, match="'woman' is not in the prompt.*FastComposer"):
        tokens.subject_token_positions(sd15_tokenizer, "a man at the beach", ["woman"])
    with pytest.raises(tokens.PhraseNotFoundError, match="2 times"):
        tokens.subject_token_positions(sd15_tokenizer, "a man at the beach", ["man", "man"])


def test_long_prompt_positions_follow_comfyui_chunks(sd15_tokenizer):
    """Past 75 tokens ComfyUI adds a 77-token chunk (the official code truncates): the word is found there."""
    prompt = " ".join(["red"] * 80) + " and a woman"
    (position,) = tokens.subject_token_positions(sd15_tokenizer, prompt, ["woman"])
    chunks = sd15_tokenizer.clip_l.tokenize_with_weights(prompt)
    assert position >= 77 and chunks[position // 77][position % 77][0] == 2308  # "woman</w>"


def test_delayed_switch_rule_table(fc):
    spec = fc.cases["delayed_conditioning"]
    for steps, expected in spec["pndm_timesteps"].items():
        assert delay.pndm_timesteps(int(steps)) == expected
    assert spec["rule_table"], "cases.json lists no rule_table row"
    for row in spec["rule_table"]:
        switch = delay.official_switch(delay.alpha_switch(row["alpha"], row["steps"]), row["steps"])
        what = f"{row['steps']} steps, alpha {row['alpha']}"
        assert delay.alpha_switch(row["alpha"], row["steps"]) == row["switch_value"], what
        assert switch.text_only_calls == row["text_only_calls_pndm"], what
        assert switch.last_text_only_timestep == row["last_text_only_timestep"], what
        assert switch.first_fused_timestep == row["first_augmented_timestep"], what
        for mine, theirs in zip(switch.window, row["comfy_switch_percent_open_interval"]):
            assert abs(mine - theirs) <= WINDOW_TOLERANCE, what
        assert abs(switch.percent - row["comfy_percent_midpoint"]) <= WINDOW_TOLERANCE, what
        inside = switch.window[0] < 1 - row["alpha"] < switch.window[1]
        assert inside == row["one_minus_alpha_inside"], what


def test_delayed_switch_runs(fc):
    runs = fc.cases["delayed_conditioning"]["runs"]
    assert runs, "cases.json lists no run"
    for name, run in runs.items():
        steps = run["num_inference_steps"]
        value = run["start_merge_step"] if run.get("start_merge_step") is not None else delay.alpha_switch(run["alpha_"], steps)
        switch = delay.official_switch(value, steps)
        assert [list(call) for call in switch.schedule()] == run["schedule"], name
        assert switch.text_only_calls == run["text_only_calls"], name
        for mine, theirs in zip(switch.window, run["comfy_switch_percent_open_interval"]):
            assert abs(mine - theirs) <= WINDOW_TOLERANCE, name


def test_switch_percent_on_comfyui_noise_levels(fc, sd15_model_sampling):
    """At the exact percent, every official call's noise level is on its official side of the switch sigma."""
    for row in fc.cases["delayed_conditioning"]["rule_table"]:
        switch = delay.official_switch(delay.alpha_switch(row["alpha"], row["steps"]), row["steps"])
        if not switch.exact:
            continue
        switch_sigma = sd15_model_sampling.percent_to_sigma(switch.percent)
        for call, timestep, which in switch.schedule():
            sigma = float(sd15_model_sampling.sigma(torch.tensor(float(timestep))))
            assert (sigma <= switch_sigma) == (which == "augmented"), (row["steps"], row["alpha"], call)


@pytest.mark.parametrize("path", ["demo", "inference"])
def test_end_to_end_conditionings(fc, sd15_tokenizer, path):
    """The conditionings the official UNet received (null, text-only, augmented), rebuilt from the tiny checkpoint."""
    tensors = fc.tensors("pipeline")
    spec = fc.cases["delayed_conditioning"]
    run = next(r for name, r in spec["runs"].items() if name.startswith(path))
    weights = {k[len("w."):]: v for k, v in tensors.items() if k.startswith("w.")}
    vision = spec["tiny_sizes"]["vision"]
    text_heads = spec["tiny_sizes"].get("text", {}).get("num_attention_heads", vision["num_attention_heads"])
    encoder = fastcomposer_encoder(weights, vision["num_attention_heads"], run["object_resolution"])
    clip = sd15_clip({k[len("text_encoder."):]: v for k, v in weights.items() if k.startswith("text_encoder.")}, text_heads)

    order = run.get("reference_order") or [f"subject{k}" for k in range(spec[f"{path}_tensors"]["num_refs"])]
    references = [tensors[f"in.ref{int(folder.removeprefix('subject'))}"] for folder in order]
    embeds = torch.cat([encoder.object_embeddings((r.float() / 255.0)[None]) for r in references])
    assert_close(embeds, tensors[f"{path}.object_embeds"].reshape(len(references), -1), f"{path}.object_embeds")

    marker = "img" if "img" in run["prompt"] and "<|image|>" not in run["prompt"] else "<|image|>"
    text_only = run["prompt"].replace(marker, "")
    null = clip.encode_from_tokens(clip.tokenize(run["negative_prompt"] or ""))
    text = clip.encode_from_tokens(clip.tokenize(text_only))
    assert_close(null, tensors[f"{path}.cond.null"], f"{path}.cond.null")
    assert_close(text, tensors[f"{path}.cond.text"], f"{path}.cond.text")
    assert_close(text, tensors[f"{path}.text_hidden"], f"{path}.text_hidden")

    positions = tokens.subject_token_positions(sd15_tokenizer, text_only, [w for w in marker_words(run["prompt"], marker)])
    assert list(positions) == spec[f"{path}_tensors"]["subject_positions"]
    assert tensors[f"{path}.image_token_mask"][0].nonzero().flatten().tolist() == sorted(positions)
    with torch.no_grad():
        augmented = fusion_patch.augmented_context(encoder.postfuse, text, positions, embeds)
    assert_close(augmented, tensors[f"{path}.cond.augmented"], f"{path}.cond.augmented")
    outside = torch.ones(augmented.shape[1], dtype=torch.bool)
    outside[list(positions)] = False
    assert torch.equal(augmented[:, outside], text[:, outside])


def test_manifest_subject_encoder_layout(fc):
    """The real checkpoint's key layout (meta tensors of the manifest's shapes) is recognised and split as FastComposer."""
    import json

    manifest = json.loads((fc.path / "fastcomposer_manifest.json").read_text())
    flat = {key: torch.empty(entry["shape"], device="meta") for key, entry in manifest_keys(manifest).items()}
    assert len(flat) == manifest["total_keys"]
    assert loader.is_fastcomposer(flat)
    image = loader.with_prefix(flat, loader.IMAGE_ENCODER_PREFIX)
    image.pop(loader.POSITION_IDS)
    config = loader.vision_config(image)
    reference = json.loads((pack_root() / ".runtime/ComfyUI/comfy/clip_vision_config_vitl.json").read_text())
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
                  "projection_dim"):
        assert config[field] == reference[field], field


def manifest_keys(manifest: dict) -> dict:
    keys = manifest["keys"]
    return keys if isinstance(keys, dict) else {entry["key"]: entry for entry in keys}


def pack_root():
    from devkit.pack import PACK_ROOT

    return PACK_ROOT
