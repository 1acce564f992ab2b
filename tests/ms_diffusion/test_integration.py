"""The patch inside ComfyUI's real sampler loop, on the tiny SDXL-topology UNet."""

import copy

import pytest
import torch

import comfy.model_management
import comfy.model_patcher

from devkit.helpers import AttentionSpy, apply, encode_subjects, layout, plain_attention, sample
from devkit.pack import pack

layer_map = pack("attention_patches.kinds.ms_diffusion.layer_map")
grids = pack("attention_patches.layer_map")
patch_mod = pack("attention_patches.patch")
routing = pack("attention_patches.routing")
injection = pack("attention_patches.injection")

TWO_BOXES = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)]
LATENT = (16, 24)  # non-square: 128 x 192 pixels


@pytest.fixture(scope="module")
def subjects(tiny_vision, tiny_clip):
    return encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])


@pytest.fixture(scope="module")
def patched(tiny_unet, tiny_encoder, subjects):
    model, routes = apply(tiny_unet, tiny_encoder, subjects, layout(TWO_BOXES, ["dog", "cat"]))
    return model


def test_spec_table_maps_adapter_indices_to_comfy_keys():
    expected = {1: ("input", 4, 0), 3: ("input", 4, 1), 5: ("input", 5, 0), 7: ("input", 5, 1), 9: ("input", 7, 0),
                27: ("input", 7, 9), 29: ("input", 8, 0), 47: ("input", 8, 9), 49: ("output", 0, 0), 69: ("output", 1, 0),
                89: ("output", 2, 0), 107: ("output", 2, 9), 109: ("output", 3, 0), 113: ("output", 4, 0),
                117: ("output", 5, 0), 119: ("output", 5, 1), 121: ("middle", 0, 0), 139: ("middle", 0, 9)}
    for index, key in expected.items():
        assert layer_map.sdxl_key_for_index(index) == key
    assert len(set(layer_map.SDXL_CROSS_ATTENTION_KEYS)) == 70
    with pytest.raises(KeyError):
        layer_map.sdxl_key_for_index(2)


def test_every_registered_key_fires_at_its_width_and_resolution(patched, tiny_clip, tiny_encoder):
    spied = patched.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1)
    seen = {call["key"]: call for call in spy.calls}
    assert set(seen) == set(tiny_encoder.layer_keys.values())
    for index, key in tiny_encoder.layer_keys.items():
        call = seen[key]
        h, w = call["options"]["activations_shape"][-2:]
        downscale = {(span.block, span.number): span.downscale for span in layer_map.SDXL_BLOCKS}[key[:2]]
        assert (h, w) == (grids.latent_grid(LATENT[0], downscale), grids.latent_grid(LATENT[1], downscale))
        assert call["q"].shape[-1] == tiny_encoder.module.layer(index).hidden_size
        # the image branch ran: positive rows differ from plain text attention
        rows = patch_mod.chunk_rows(call["options"]["cond_or_uncond"], call["q"].shape[0])
        plain = plain_attention(call["q"], call["k"], call["v"], call["options"])
        assert not torch.allclose(call["out"][rows], plain[rows])


def test_negative_rows_equal_plain_attention(patched, tiny_clip):
    spied = patched.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1)
    for call in spy.calls:
        options = call["options"]
        chunk = call["q"].shape[0] // len(options["cond_or_uncond"])
        plain = plain_attention(call["q"], call["k"], call["v"], options)
        for i, kind in enumerate(options["cond_or_uncond"]):
            if kind == 1:
                assert torch.equal(call["out"][i * chunk:(i + 1) * chunk], plain[i * chunk:(i + 1) * chunk])


def test_negative_rows_of_the_whole_unet_equal_the_unpatched_model(patched, tiny_unet, tiny_clip):
    from devkit.helpers import encode_text

    positive, negative = encode_text(tiny_clip, "a dog and a cat"), encode_text(tiny_clip, "blurry")
    x = torch.randn(2, 4, *LATENT, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([5.0, 5.0])
    context = torch.cat([negative[0][0], positive[0][0]])
    adm = tiny_unet.model.encode_adm(pooled_output=torch.cat([negative[0][1]["pooled_output"], positive[0][1]["pooled_output"]]),
                                     width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    outputs = []
    for model in (tiny_unet, patched):
        options = dict(model.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigma)
        with torch.no_grad():
            outputs.append(model.model.apply_model(x, sigma, c_crossattn=context, y=adm, transformer_options=options))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert not torch.allclose(outputs[0][1], outputs[1][1])


def replay(patch, call, **option_changes):
    options = dict(call["options"], **option_changes)
    return patch(call["q"].clone(), call["k"].clone(), call["v"].clone(), options)


def test_changing_one_subject_changes_output_only_inside_its_box(tiny_unet, tiny_encoder, tiny_vision, tiny_clip, patched):
    other = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"], seeds=[0, 7])  # same dog, another cat
    changed, _ = apply(tiny_unet, tiny_encoder, other, layout(TWO_BOXES))
    spied = patched.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1)
    attn2 = changed.model_options["transformer_options"]["patches_replace"]["attn2"]
    boxes = torch.tensor(TWO_BOXES)
    checked = set()
    for call in spy.calls:
        key = call["key"]
        h, w = call["options"]["activations_shape"][-2:]
        rows = patch_mod.chunk_rows(call["options"]["cond_or_uncond"], call["q"].shape[0])
        difference = (replay(attn2[key], call) - call["out"])[rows].abs().amax(dim=(0, 2))
        cat_box = routing.box_routes(boxes[1:], h, w)[0] > 0
        assert difference[~cat_box].max() == 0, key
        assert difference[cat_box].min() > 0, key
        checked.add(key)
    assert len(checked) == 70


def test_original_model_is_untouched(tiny_unet, tiny_encoder, subjects, tiny_clip):
    before = sample(tiny_unet, tiny_clip, LATENT, steps=2)
    options_before = copy.deepcopy(tiny_unet.model_options)
    apply(tiny_unet, tiny_encoder, subjects, layout(TWO_BOXES))
    assert tiny_unet.model_options == options_before
    assert "patches_replace" not in tiny_unet.model_options["transformer_options"]
    assert torch.equal(before, sample(tiny_unet, tiny_clip, LATENT, steps=2))


def test_patched_model_changes_the_result(tiny_unet, patched, tiny_clip):
    assert not torch.allclose(sample(tiny_unet, tiny_clip, LATENT, steps=2), sample(patched, tiny_clip, LATENT, steps=2))


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_cfg_one_and_batched_cfg(patched, tiny_unet, tiny_clip, cfg):
    spied = patched.clone()
    spy = AttentionSpy(spied)
    out = sample(spied, tiny_clip, LATENT, steps=2, cfg=cfg)
    assert torch.isfinite(out).all()
    expected = [[0]] if cfg == 1.0 else [[1, 0], [0, 1]]
    assert spy.calls[0]["options"]["cond_or_uncond"] in expected
    assert not torch.allclose(out, sample(tiny_unet, tiny_clip, LATENT, steps=2, cfg=cfg))


def spied_call(model, clip):
    spied = model.clone()
    spy = AttentionSpy(spied)
    sample(spied, clip, LATENT, steps=1)
    return spy.calls[0]


def attn2_patch(model, key):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def test_positive_rows_follow_cond_or_uncond(patched, tiny_clip):
    call = spied_call(patched, tiny_clip)
    order = call["options"]["cond_or_uncond"]
    chunk = call["q"].shape[0] // len(order)
    rows = {kind: slice(i * chunk, (i + 1) * chunk) for i, kind in enumerate(order)}
    patch = attn2_patch(patched, call["key"])
    for arrangement in ([0, 1], [1, 0, 0], [0, 1, 0], [1]):
        q, k, v = (torch.cat([call[n][rows[kind]] for kind in arrangement]) for n in "qkv")
        out = patch(q, k, v, dict(call["options"], cond_or_uncond=arrangement))
        for i, kind in enumerate(arrangement):
            assert torch.allclose(out[i * chunk:(i + 1) * chunk], call["out"][rows[kind]], atol=1e-5), arrangement


def test_two_applies_both_act_and_add_up(tiny_unet, tiny_encoder, subjects, tiny_clip, patched):
    first, _ = apply(tiny_unet, tiny_encoder, subjects[:1], layout(TWO_BOXES[:1]))
    both, _ = apply(first, tiny_encoder, subjects[1:], layout(TWO_BOXES[1:]))
    second, _ = apply(tiny_unet, tiny_encoder, subjects[1:], layout(TWO_BOXES[1:]))
    assert len(attn2_patch(first, ("input", 4, 0)).routings) == 1  # the first model keeps its own patches
    assert len(attn2_patch(both, ("input", 4, 0)).routings) == 2
    call = spied_call(patched, tiny_clip)
    plain = plain_attention(call["q"], call["k"], call["v"], call["options"])
    delta = {name: replay(attn2_patch(m, call["key"]), call) - plain for name, m in
             (("first", first), ("second", second), ("both", both))}
    assert torch.allclose(delta["both"], delta["first"] + delta["second"], atol=1e-5)
    assert delta["first"].abs().max() > 0 and delta["second"].abs().max() > 0
    assert not torch.allclose(sample(both, tiny_clip, LATENT, steps=2), sample(first, tiny_clip, LATENT, steps=2))


class ForeignPatch:
    """An IP-Adapter-style attn2 replace object: callable, with .to and .models (deep-copied on clone)."""

    calls = 0  # counted on the class: every clone holds its own copy of the object

    def __init__(self, offset):
        self.offset = offset

    def __call__(self, q, k, v, extra_options):
        ForeignPatch.calls += 1
        return plain_attention(q, k, v, extra_options) + self.offset

    def to(self, device_or_dtype):
        return self

    def models(self):
        return []


def test_foreign_patch_keeps_working_and_ours_adds_to_it(tiny_unet, tiny_encoder, subjects, tiny_clip, patched):
    foreign = ForeignPatch(0.25)
    base = tiny_unet.clone()
    for key in layer_map.SDXL_CROSS_ATTENTION_KEYS:
        base.set_model_attn2_replace(foreign, *key)
    ours, _ = apply(base, tiny_encoder, subjects, layout(TWO_BOXES))
    ForeignPatch.calls = 0
    sample(ours, tiny_clip, LATENT, steps=1)
    assert ForeignPatch.calls == 70
    call = spied_call(patched, tiny_clip)
    wrapped = attn2_patch(ours, call["key"])
    assert isinstance(wrapped.base, ForeignPatch)
    assert torch.allclose(replay(wrapped, call), call["out"] + 0.25, atol=1e-5)


def test_resampler_runs_once_per_apply_not_per_step(tiny_unet, tiny_encoder, subjects, tiny_clip):
    calls = []
    hook = tiny_encoder.module.image_proj.register_forward_hook(lambda *a: calls.append(1))
    try:
        model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(TWO_BOXES))
        assert len(calls) == len(subjects)
        sample(model, tiny_clip, LATENT, steps=3)
        assert len(calls) == len(subjects)
    finally:
        hook.remove()


def test_hires_second_pass_at_another_resolution(patched, tiny_clip):
    low = sample(patched, tiny_clip, (16, 16), steps=2)
    high = torch.nn.functional.interpolate(low, size=(24, 40), mode="nearest")
    spied = patched.clone()
    spy = AttentionSpy(spied)
    out = sample(spied, tiny_clip, (24, 40), steps=2, latent=high)
    assert torch.isfinite(out).all()
    assert {tuple(c["options"]["activations_shape"][-2:]) for c in spy.calls} == {(12, 20), (6, 10)}


def test_projected_tokens_are_cached_per_device_and_dtype(patched, tiny_clip):
    call = spied_call(patched, tiny_clip)
    routing_ = attn2_patch(patched, call["key"]).routings[0]
    first = routing_.tokens(call["key"], torch.device("cpu"), torch.bfloat16)
    again = routing_.tokens(call["key"], torch.device("cpu"), torch.bfloat16)
    assert first[0] is again[0] and first[0].dtype == torch.bfloat16
    native = routing_.tokens(call["key"], torch.device("cpu"), torch.float32)
    assert native[0] is routing_.bank.layer(call["key"]).key  # no copy in the bank's own dtype


def test_patch_objects_are_cheap_to_copy_and_owned_by_the_memory_manager(patched, tiny_clip):
    patch = attn2_patch(patched, ("input", 4, 0))
    copied = copy.deepcopy(patch)
    assert copied is not patch and copied.routings[0] is patch.routings[0]
    assert attn2_patch(patched.clone(), ("input", 4, 0)).routings[0].bank is patch.routings[0].bank
    bank_patcher = patch.routings[0].bank_patcher
    assert patch.models() == [bank_patcher]
    assert patch.to(torch.float16) is patch
    sample(patched, tiny_clip, LATENT, steps=1)
    assert bank_patcher in patched.model_patches_models()
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert any(m is bank_patcher for m in loaded)


def test_encoder_model_mismatch_is_refused(tiny, tiny_encoder, subjects):
    sd15 = tiny.tiny_sd15_model()
    with pytest.raises(injection.SubjectSetupError, match="SDXL.*768"):
        apply(sd15, tiny_encoder, subjects, layout(TWO_BOXES))


def test_subject_and_box_counts_must_match(tiny_unet, tiny_encoder, subjects):
    with pytest.raises(injection.SubjectSetupError, match=r"2 subject\(s\) \('dog', 'cat'\) but 1 box"):
        apply(tiny_unet, tiny_encoder, subjects, layout(TWO_BOXES[:1]))
    with pytest.raises(injection.SubjectSetupError, match=r"1 subject\(s\).*but 2 box"):
        apply(tiny_unet, tiny_encoder, subjects[:1], layout(TWO_BOXES))


def test_wrong_clip_vision_is_named(tiny, tiny_unet, tiny_encoder, tiny_clip):
    wrong = tiny.tiny_clip_vision(width=tiny.VIT_H_STANDIN_WIDTH)
    subjects = encode_subjects(wrong, tiny_clip, ["dog"])
    with pytest.raises(injection.SubjectSetupError, match="clip_vision_g.safetensors"):
        apply(tiny_unet, tiny_encoder, subjects, layout(TWO_BOXES[:1]))
