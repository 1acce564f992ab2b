"""Chaining with IPAdapter-family packs (IPAdapter+, InstantID, PuLID, forks) through their `.add` protocol.

Those packs put one attn2 replace object per key. When a key already holds a patch they call
``patch.add(callback, **kwargs)`` on it; their own object keeps a list of callbacks and adds
``callback(out, q, k, v, extra_options, **kwargs)`` to ``out`` while sigma lies in
``[sigma_end, sigma_start]``. ``ProtocolPatch`` and ``install`` below follow that protocol (written
here from its description, not copied), so both orders and deeper chains are tested for real.
"""

from __future__ import annotations

import pytest
import torch

from devkit.helpers import AttentionSpy, apply, encode_subjects, layout, plain_attention, sample
from devkit.pack import pack

layer_map = pack("attention_patches.kinds.ms_diffusion.layer_map")
patch_mod = pack("attention_patches.patch")

BOXES = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)]
LATENT = (16, 24)
EVERY_SIGMA = {"sigma_start": 1e9, "sigma_end": 0.0}


class ProtocolPatch:
    """A stand-in for the IPAdapter family's attn2 object: plain attention + its callbacks in their windows."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [callback]
        self.kwargs = [kwargs]

    def add(self, callback, **kwargs):
        self.callbacks.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        out = plain_attention(q, k, v, extra_options)
        sigma = float(extra_options["sigmas"][0]) if "sigmas" in extra_options else 1e9
        for callback, kwargs in zip(self.callbacks, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)


def install(model, callback, keys=layer_map.SDXL_CROSS_ATTENTION_KEYS, **kwargs):
    """What those packs do on a clone of the MODEL: a new object on a free key, `.add` on a taken one."""
    model = model.clone()
    options = model.model_options["transformer_options"].copy()
    options["patches_replace"] = dict(options.get("patches_replace", {}))
    attn2 = options["patches_replace"]["attn2"] = dict(options["patches_replace"].get("attn2", {}))
    for key in keys:
        if key in attn2:
            attn2[key].add(callback, module_key=key, **kwargs)
        else:
            attn2[key] = ProtocolPatch(callback, module_key=key, **kwargs)
    model.model_options["transformer_options"] = options
    return model


class Callback:
    """A callback that depends on q and on the ``out`` it is given, and records its keyword arguments."""

    def __init__(self, weight):
        self.weight = weight
        self.seen = []

    def __call__(self, out, q, k, v, extra_options, weight, module_key, sigma_start, sigma_end):
        self.seen.append({"weight": weight, "module_key": module_key, "sigma_start": sigma_start, "sigma_end": sigma_end})
        return weight * torch.tanh(q) + 0.01 * out

    def __deepcopy__(self, memo):
        return self  # shared like a module-level function, so the calls are counted across clones


@pytest.fixture(scope="module")
def subjects(tiny_vision, tiny_clip):
    return encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])


@pytest.fixture(scope="module")
def ours(tiny_unet, tiny_encoder, subjects):
    return apply(tiny_unet, tiny_encoder, subjects, layout(BOXES, ["dog", "cat"]))[0]


@pytest.fixture(scope="module")
def call(tiny_unet, tiny_clip):
    """One real attn2 call of the unpatched UNet inside the sampler (q, k, v, options)."""
    spied = tiny_unet.clone()
    spied.set_model_attn2_replace(lambda q, k, v, o: plain_attention(q, k, v, o), "input", 4, 0)
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1)
    return spy.calls[0]


def attn2(model, key=("input", 4, 0)):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][key]


def run(patch, call, **options):
    return patch(call["q"].clone(), call["k"].clone(), call["v"].clone(), dict(call["options"], **options))


def test_add_on_our_patch_adds_the_callback_inside_its_window(ours, call):
    callback = Callback(0.3)
    theirs = install(ours, callback, weight=0.3, **EVERY_SIGMA)
    ours_out = run(attn2(ours), call)
    expected = ours_out + callback(ours_out, call["q"], call["k"], call["v"], call["options"], 0.3, ("input", 4, 0), **EVERY_SIGMA)
    callback.seen.clear()
    assert torch.allclose(run(attn2(theirs), call), expected, atol=1e-6)
    assert callback.seen == [{"weight": 0.3, "module_key": ("input", 4, 0), **EVERY_SIGMA}]
    sigma = float(call["options"]["sigmas"][0])
    outside = install(ours, Callback(0.3), weight=0.3, sigma_start=sigma / 2, sigma_end=0.0)
    assert torch.equal(run(attn2(outside), call), ours_out)
    edge = install(ours, Callback(0.3), weight=0.3, sigma_start=sigma, sigma_end=sigma)  # the window is inclusive
    assert not torch.equal(run(attn2(edge), call), ours_out)


def test_add_on_a_clone_never_reaches_the_model_it_was_cloned_from(ours, tiny_clip, call):
    before = run(attn2(ours), call)
    sampled = sample(ours, tiny_clip, LATENT, steps=2)
    callback = Callback(0.5)
    theirs = install(ours, callback, weight=0.5, **EVERY_SIGMA)
    twice = install(theirs, callback, weight=0.5, **EVERY_SIGMA)
    assert attn2(ours).callbacks == [] and len(attn2(theirs).callbacks) == 1 and len(attn2(twice).callbacks) == 2
    assert torch.equal(run(attn2(ours), call), before)
    callback.seen.clear()
    assert torch.equal(sample(ours, tiny_clip, LATENT, steps=2), sampled)
    assert callback.seen == []
    assert not torch.allclose(sample(theirs, tiny_clip, LATENT, steps=2), sampled)
    assert len(callback.seen) == 2 * 70  # two steps, every patched key, once per model call (batched cfg)


def test_their_patch_first_then_ours_adds_the_subjects(tiny_unet, tiny_encoder, subjects, ours, call):
    theirs = install(tiny_unet, Callback(0.3), weight=0.3, **EVERY_SIGMA)
    both = apply(theirs, tiny_encoder, subjects, layout(BOXES, ["dog", "cat"]))[0]
    assert isinstance(attn2(both).base, ProtocolPatch)
    image = run(attn2(ours), call) - plain_attention(call["q"], call["k"], call["v"], call["options"])
    assert torch.allclose(run(attn2(both), call), run(attn2(theirs), call) + image, atol=1e-5)


def test_three_deep_both_ways_in_the_real_sampler(tiny_unet, tiny_encoder, subjects, tiny_clip, ours, call):
    first, second = Callback(0.2), Callback(-0.4)
    sub_dog, sub_cat = subjects[:1], subjects[1:]
    box_dog, box_cat = layout(BOXES[:1], ["dog"]), layout(BOXES[1:], ["cat"])
    plain = plain_attention(call["q"], call["k"], call["v"], call["options"])

    # theirs -> ours -> theirs: the second callback is added on our patch, after the first one and our subjects
    chain = install(apply(install(tiny_unet, first, weight=0.2, **EVERY_SIGMA), tiny_encoder, subjects,
                          layout(BOXES, ["dog", "cat"]))[0], second, weight=-0.4, **EVERY_SIGMA)
    patch = attn2(chain)
    assert isinstance(patch.base, ProtocolPatch) and len(patch.callbacks) == 1
    out = plain + first(plain, call["q"], call["k"], call["v"], call["options"], 0.2, ("input", 4, 0), **EVERY_SIGMA)
    out = out + (run(attn2(ours), call) - plain)
    out = out + second(out, call["q"], call["k"], call["v"], call["options"], -0.4, ("input", 4, 0), **EVERY_SIGMA)
    assert torch.allclose(run(patch, call), out, atol=1e-5)

    # ours -> theirs -> ours: the second Apply wraps the patch that carries the callback, keeping the order
    dog = apply(tiny_unet, tiny_encoder, sub_dog, box_dog)[0]
    dog_theirs = install(dog, first, weight=0.2, **EVERY_SIGMA)
    chain2 = apply(dog_theirs, tiny_encoder, sub_cat, box_cat)[0]
    outer = attn2(chain2)
    assert outer.base is not None and len(outer.base.callbacks) == 1 and outer.callbacks == []
    assert attn2(dog_theirs).base is None and len(attn2(dog_theirs).routings) == 1  # the middle model keeps its patch
    cat_only = run(attn2(apply(tiny_unet, tiny_encoder, sub_cat, box_cat)[0]), call) - plain
    assert torch.allclose(run(outer, call), run(attn2(dog_theirs), call) + cat_only, atol=1e-5)

    first.seen.clear()
    second.seen.clear()
    for model in (chain, chain2):
        result = sample(model, tiny_clip, LATENT, steps=2)
        assert torch.isfinite(result).all()
    assert len(first.seen) == 2 * 2 * 70 and len(second.seen) == 2 * 70
    assert not torch.allclose(sample(chain, tiny_clip, LATENT, steps=2), sample(ours, tiny_clip, LATENT, steps=2))
