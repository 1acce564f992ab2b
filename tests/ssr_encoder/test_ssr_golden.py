"""SSR-Encoder against the official modules' outputs (../shared/golden/ssr_encoder), through the pack's code.

Every size, count, weight and case name comes from the golden folder's cases.json.
"""

import pytest
import torch

import comfy.ldm.modules.attention  # noqa: F401  (the patch's attention)

from devkit.helpers import GOLDEN_TOLERANCE, assert_close
from devkit.pack import pack
from devkit.tiny_sd15 import clip_vision_from_config

pytestmark = pytest.mark.golden

preprocess = pack("models.ssr_encoder.preprocess")
aligner_mod = pack("models.ssr_encoder.aligner")
loader = pack("models.ssr_encoder.loader")
layers_mod = pack("models.ssr_encoder.layers")
encoding = pack("attention_patches.kinds.ssr_encoder.encoding")
ssr = pack("attention_patches.kinds.ssr_encoder.encoder")
patch_mod = pack("attention_patches.patch")
bank_mod = pack("attention_patches.subject_bank")
base = pack("attention_patches.kinds.base")

TOLERANCE = GOLDEN_TOLERANCE


@pytest.fixture(scope="module")
def golden(golden_set):
    return golden_set("ssr_encoder")


@pytest.fixture(scope="module")
def encoder_tensors(golden):
    return golden.tensors("encoder")


@pytest.fixture(scope="module")
def aligner(encoder_tensors):
    return loader.build_aligner({k[len("aligner.w."):]: v for k, v in encoder_tensors.items() if k.startswith("aligner.w.")})


def close(a, b):
    assert a.shape == b.shape
    assert_close(a, b)


def test_pixels_are_the_official_clip_image_processor_ones(encoder_tensors):
    close(preprocess.clip_pixels(encoder_tensors["prep.in.image"]), encoder_tensors["prep.out.pixel_values"])


def test_clip_layer_outputs_without_post_norm(golden, encoder_tensors):
    config = golden.cases["encoder"]["clip_config"]
    state = {k[len("clip.w."):]: v for k, v in encoder_tensors.items() if k.startswith("clip.w.")}
    vision = clip_vision_from_config(config, state)
    width = config["hidden_size"]
    pixels = preprocess.clip_pixels(encoder_tensors["prep.in.image"])
    close(encoding.clip_layer_features(vision, pixels, width), encoder_tensors["text_query.in.image_features"][:1])
    zero = torch.zeros(1, 3, config["image_size"], config["image_size"])
    close(encoding.clip_layer_features(vision, zero, width), encoder_tensors["clip.out.zero_image_features"])


def test_text_query_tokens_and_unconditional_tokens(golden, aligner, encoder_tensors):
    dims = golden.cases["dims"]
    tokens = aligner(encoder_tensors["text_query.in.query"], encoder_tensors["text_query.in.image_features"])
    assert tokens.shape[1] == 6 * dims["query_tokens"]
    close(tokens, encoder_tensors["text_query.out.subject_tokens"])
    uncond = aligner(encoder_tensors["text_query.in.uncond_query"], encoder_tensors["clip.out.zero_image_features"])
    close(uncond, encoder_tensors["text_query.out.uncond_subject_tokens"])


@pytest.mark.parametrize("layout_", ["official", "community"])
def test_both_aligner_layouts_give_the_same_module(encoder_tensors, layout_):
    official = {k[len("aligner.w."):]: v for k, v in encoder_tensors.items() if k.startswith("aligner.w.")}
    state = official if layout_ == "official" else loader.aligner_state_dict(official)
    assert loader.file_role(state) == loader.ALIGNER
    module = loader.build_aligner(state)
    close(module(encoder_tensors["text_query.in.query"], encoder_tensors["text_query.in.image_features"]),
          encoder_tensors["text_query.out.subject_tokens"])


def mask_cases(golden):
    return golden.cases["encoder"]["mask_query"]["cases"].items()


def test_mask_query_cases(golden, aligner, encoder_tensors):
    mask_query = golden.cases["encoder"]["mask_query"]
    assert mask_query["cases"], "no mask-query cases"
    for name, case in mask_cases(golden):
        antialias = not str(case["resize_antialias"]).startswith("False")
        # a square reference: cropping like the image keeps the whole mask, as the official code does
        grid = preprocess.mask_grid(encoder_tensors["mask_query.in.mask"], mask_query["grid"], crop=True, antialias=antialias)
        close(grid[0], encoder_tensors[f"mask_query.{name}.resized_mask"])
        bias = aligner_mod.mask_query_bias(grid, case["mask_weight"])
        close(aligner(encoder_tensors["mask_query.in.query"], encoder_tensors["mask_query.in.image_features"], bias),
              encoder_tensors[f"mask_query.{name}.out.subject_tokens"])
        close(aligner(encoder_tensors["text_query.in.uncond_query"], encoder_tensors["clip.out.zero_image_features"], bias),
              encoder_tensors[f"mask_query.{name}.out.uncond_subject_tokens"])


def case_subject_scales(dims, case) -> list[float] | None:
    """The scale list a case was generated with: its per-subject scales, or the generate_multi list of its size."""
    count = case["num_subjects"]
    if case["per_subject_scales"] is not None:
        return list(case["per_subject_scales"])
    if count == 1:
        return None
    lists = [v for k, v in sorted(dims.items()) if k.endswith("scales") and isinstance(v, list) and len(v) == count]
    assert lists, f"no scale list of {count} in dims"
    return list(lists[0])


def case_truth(case) -> bool:
    """How the case's tokens were scaled: official (every subject x the first scale) unless it lists per-subject scales."""
    return case["per_subject_scales"] is None


def run_case(golden, name, case, official_multi_scale):
    """One attn2 layer through the pack's patch: SSR keys/values projected as Apply does, negative row 0, positive row 1.

    The layer saw the tokens already scaled; the aligner's tokens are recovered with the case's own
    rule, then Apply's code scales them again in the mode under test.
    """
    t = golden.tensors("attention")
    weight = lambda n: t[f"{name}.w.{n}"]  # noqa: E731
    attention_cases = golden.cases["attention"]
    per_subject = attention_cases["tokens_per_subject"]
    count = case["num_subjects"]
    hidden_states, text = t[f"{name}.in.hidden_states"], t[f"{name}.in.text_context"]
    subject_tokens = t[f"{name}.in.subject_tokens"]
    dims = golden.cases["dims"]
    scales = case_subject_scales(dims, case)
    settings = base.ApplySettings(scale=case["scale"], subject_scales=None if scales is None else tuple(scales))
    applied = ssr.token_scales(settings, count, official_multi_scale)
    truth = ssr.token_scales(settings, count, case_truth(case))
    raw = subject_tokens[1].view(count, per_subject, -1) / truth.view(-1, 1, 1)
    negative = subject_tokens[0].view(count, per_subject, -1)
    layers = layers_mod.SSRLayers(text.shape[-1], {1: case["hidden"]})
    layers.load_state_dict({"1.to_k_SSR.weight": weight("to_k_SSR.weight"), "1.to_v_SSR.weight": weight("to_v_SSR.weight")})
    key = ("input", 1, 0)
    project = lambda tokens, s: ssr.project_tokens(layers, {1: key}, tokens, s, case["scale"], torch.float32, torch.device("cpu"))  # noqa: E731
    bank = bank_mod.SubjectBank(project(raw, applied), project(negative, torch.ones(count)))
    routing = patch_mod.SubjectRouting(bank=bank, bank_patcher=None, boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]] * count))
    attention = patch_mod.MultiSubjectAttention(key, (routing,))
    q = hidden_states @ weight("to_q.weight").T
    options = {"n_heads": case["heads"], "cond_or_uncond": [1, 0], "activations_shape": [2, case["hidden"], case["height"], case["width"]]}
    out = attention(q, text @ weight("to_k.weight").T, text @ weight("to_v.weight").T, options)
    return out @ weight("to_out.weight").T + weight("to_out.bias"), t[f"{name}.out"]


def test_attention_cases(golden):
    cases = golden.cases["attention"]["cases"]
    assert cases
    for name, case in cases.items():
        out, expected = run_case(golden, name, case, official_multi_scale=case_truth(case))
        close(out, expected)


def test_the_scale_mode_matters_where_subject_scales_differ(golden):
    """Official cases match only with the official switch, the per-subject case only without it."""
    checked = 0
    for name, case in golden.cases["attention"]["cases"].items():
        scales = case_subject_scales(golden.cases["dims"], case)
        if scales is None or len(set(scales)) == 1:
            continue
        out, expected = run_case(golden, name, case, official_multi_scale=not case_truth(case))
        assert (out - expected).abs().max().item() > 100 * TOLERANCE
        checked += 1
    assert checked
