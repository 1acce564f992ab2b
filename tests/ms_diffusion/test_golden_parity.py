"""Parity with the official MS-Diffusion modules (goldens), through the pack's own code paths, fp32."""

import pytest
import torch

from devkit.helpers import GOLDEN_TOLERANCE, assert_close
from devkit.pack import pack

TOLERANCE = GOLDEN_TOLERANCE
pytestmark = pytest.mark.golden

loader = pack("models.ms_diffusion.loader")
resampler = pack("models.ms_diffusion.resampler")
ms_diffusion = pack("models.ms_diffusion.model")
patch_mod = pack("attention_patches.patch")
auto_routing = pack("attention_patches.auto_routing")
subject_bank = pack("attention_patches.subject_bank")

KEY = ("input", 4, 0)


@pytest.fixture(scope="module")
def resampler_case(golden):
    tensors = golden.tensors("resampler")
    state = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    config = golden.cases["resampler"]["config"]
    inferred = loader.infer_resampler_config(state, {"resampler_dim_head": str(config["dim_head"])})
    model = resampler.GroundingResampler(inferred)
    model.load_state_dict(state, strict=True)
    return model.eval(), tensors, config


def test_resampler_config_is_inferred_from_shapes(resampler_case):
    model, _, config = resampler_case
    c = model.config
    assert (c.dim, c.depth, c.heads, c.dim_head, c.num_queries, c.embedding_dim, c.output_dim, c.ff_mult, c.phrase_dim) == (
        config["dim"], config["depth"], config["heads"], config["dim_head"], config["num_queries"], config["embedding_dim"],
        config["output_dim"], config["ff_mult"], config["phrase_embeddings_dim"])


def test_fourier_embedding(resampler_case, golden):
    _, tensors, _ = resampler_case
    assert_close(resampler.fourier_embed(tensors["in.boxes"], golden.cases["resampler"]["fourier_freqs"]), tensors["out.fourier"])


@pytest.mark.parametrize("drop, name", [(False, "out.grounded"), (True, "out.dropped")])
def test_resampler_tokens(resampler_case, drop, name):
    model, tensors, _ = resampler_case
    with torch.no_grad():
        out = model(tensors["in.image_hidden_states"], tensors["in.phrase_embeds"], tensors["in.boxes"], drop)
    assert_close(out, tensors[name])


def golden_patch(weights, image_tokens, boxes, scales, **routing_options):
    """The pack's patch for one golden layer: subject keys/values projected by the pack's module."""
    import comfy.model_patcher

    projection = ms_diffusion.ImageKeyValueProjection(weights["to_k_ip.weight"].shape[1], weights["to_k_ip.weight"].shape[0])
    projection.load_state_dict({"to_k_ip.weight": weights["to_k_ip.weight"], "to_v_ip.weight": weights["to_v_ip.weight"]})
    with torch.no_grad():
        keys, values = projection.to_k_ip(image_tokens), projection.to_v_ip(image_tokens)
    values = values * torch.tensor(scales).view(-1, 1, 1)
    bank = subject_bank.SubjectBank({KEY: (keys, values)})
    routing = patch_mod.SubjectRouting(
        bank=bank,
        bank_patcher=comfy.model_patcher.ModelPatcher(bank, torch.device("cpu"), torch.device("cpu")),
        boxes=boxes,
        **routing_options,
    )
    return patch_mod.MultiSubjectAttention(KEY, (routing,))


def run_layer(weights, patch, hidden, text, heads, height, width, cond_or_uncond, **extra):
    q = hidden @ weights["to_q.weight"].T
    k = text @ weights["to_k.weight"].T
    v = text @ weights["to_v.weight"].T
    options = {"n_heads": heads, "activations_shape": [hidden.shape[0], q.shape[-1], height, width],
               "cond_or_uncond": cond_or_uncond, **extra}
    with torch.no_grad():
        out = patch(q, k, v, options)
    return out @ weights["to_out.weight"].T + weights["to_out.bias"]


def test_attention_cases(golden):
    """Every attention case that cases.json lists, whatever their names and sizes."""
    tensors = golden.tensors("attention")
    spec = golden.cases["attention"]
    assert spec["cases"], "cases.json lists no attention case"
    for case_name, case in spec["cases"].items():
        check_attention_case(tensors, spec, case_name, case)


def check_attention_case(tensors, spec, case_name, case):
    weights = {k[len(f"{case_name}.w."):]: v for k, v in tensors.items() if k.startswith(f"{case_name}.w.")}
    hidden = tensors[f"{case_name}.in.hidden_states"]
    text = tensors[f"{case_name}.in.text_context"]
    image_tokens = tensors[f"{case_name}.in.image_tokens"]
    boxes = tensors[f"{case_name}.in.boxes"]
    dummy, per_subject, subjects = spec["num_dummy_tokens"], spec["num_tokens"], case["num_subjects"]
    scales = case["subject_scales"] or [case["scale"]] * subjects
    # the positive row is row 0; in two_subjects_cfg, row 1 is the unconditional one
    tokens = image_tokens[0, dummy:].reshape(subjects, per_subject, -1)
    patch = golden_patch(weights, tokens, boxes[0], scales)
    cond_or_uncond = [0, 1] if hidden.shape[0] == 2 else [0]
    out = run_layer(weights, patch, hidden, text, spec["heads"], case["height"], case["width"], cond_or_uncond)
    assert_close(out, tensors[f"{case_name}.out"])


def test_auto_layout_steps(golden):
    tensors = golden.tensors("autolayout")
    spec = golden.cases["autolayout"]
    attention = golden.cases["attention"]
    weights = {k[len("w."):]: v for k, v in tensors.items() if k.startswith("w.")}
    spans = tensors["in.phrase_idxes"][0].tolist()
    subjects = len(spans)
    tokens = tensors["in.image_tokens"][0, attention["num_dummy_tokens"]:].reshape(subjects, attention["num_tokens"], -1)
    auto = auto_routing.AutoRouting(tuple(tuple(range(a, b)) for a, b in spans), spec["mask_threshold"], spec["start_step"])
    patch = golden_patch(weights, tokens, tensors["in.boxes"][0], [spec["scale"]] * subjects, auto=auto)
    for routing in patch.routings:
        routing.start_run()  # a sampling run: auto routing keeps this run's phrase-map history
    schedule = torch.linspace(10.0, 0.0, spec["steps"] + 1)  # one model call per sampling step, as the official loop
    for step in range(spec["steps"]):
        out = run_layer(weights, patch, tensors[f"step{step}.in.hidden_states"], tensors["in.text_context"],
                        attention["heads"], spec["height"], spec["width"], [0],
                        sample_sigmas=schedule, sigmas=schedule[step:step + 1])
        assert_close(out, tensors[f"step{step}.out"])
