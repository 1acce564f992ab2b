"""LAMIC on Qwen-Image-Edit-2509, proved by properties through ComfyUI's sampler on a tiny real-topology model."""

from __future__ import annotations

import pytest
import torch

from lamic.incontext_support import LEFT, RIGHT, BatchProbe, patched, sample, with_dense_attention, with_reference
from devkit.incontext_tiny import qwen_conditioning, seeded, tiny_qwen_image
from devkit.pack import pack

qwen = pack("attention_patches.kinds.lamic.qwen")
qwen_text = pack("models.lamic.qwen_text")

REF_SIZES = [(64, 64), (64, 96)]  # pixels; latents 8x8 and 8x12
PROMPT_TOKENS = 6


def text_tokens(prompt_tokens=PROMPT_TOKENS, ref_sizes=REF_SIZES):
    """The context length TextEncodeQwenImageEditPlus gives these references and a prompt of ``prompt_tokens``."""
    counts = [qwen_text.vision_tokens_for_latent(h // 8, w // 8) for h, w in ref_sizes]
    return sum(qwen_text.PICTURE_PREFIX_TOKENS + qwen_text.VISION_BRACKET_TOKENS + c for c in counts) + prompt_tokens + \
        qwen_text.TEMPLATE_TAIL_TOKENS


@pytest.fixture(scope="module")
def model():
    return tiny_qwen_image()


@pytest.fixture(scope="module")
def latent():
    return torch.zeros(1, 16, 1, 16, 16)  # 128 x 128 px: 8 x 8 tokens; LEFT = latent columns 0..7


@pytest.fixture(scope="module")
def positive():
    return qwen_conditioning(1, text_tokens(), REF_SIZES)


@pytest.fixture(scope="module")
def negative():
    return qwen_conditioning(50, text_tokens(prompt_tokens=1), REF_SIZES)


def other_second_reference(conditioning):
    return with_reference(conditioning, 1, seeded(99, *conditioning[0][1]["reference_latents"][1].shape))


def test_all_allowed_layout_is_the_unpatched_model(model, latent, positive, negative):
    """One reference over the whole image in stage 2 allows every pair: bit-identical to no patch, CFG included."""
    one = [[c, {"reference_latents": e["reference_latents"][:1]}] for c, e in positive]
    one_negative = [[c, {"reference_latents": e["reference_latents"][:1]}] for c, e in negative]
    clone, classes_for = patched(model, qwen.QwenEditAdapter(), [(0.0, 0.0, 1.0, 1.0)], first_stage_ratio=0.0)
    got = sample(clone, latent, one, one_negative, cfg=2.5, steps=2)
    assert torch.equal(got, sample(model, latent, one, one_negative, cfg=2.5, steps=2))
    assert classes_for.layouts, "the patch never built a mask"


def test_another_reference_cannot_reach_a_box(model, latent, positive, negative):
    """Stage 1: box 1's tokens see only reference 1; replacing reference 2 leaves them bit-identical, both CFG rows
    (texts of different lengths: separate calls, one mask per actual text length), and changes box 2."""
    clone, classes_for = patched(model, qwen.QwenEditAdapter(), [LEFT, RIGHT])
    base = sample(clone, latent, positive, negative, cfg=3.0, steps=2)
    changed = sample(clone, latent, other_second_reference(positive), other_second_reference(negative), cfg=3.0, steps=2)
    assert torch.equal(base[..., :8], changed[..., :8])
    assert not torch.allclose(base[..., 8:], changed[..., 8:])
    assert {layout.text for layout in classes_for.layouts} == {text_tokens(), text_tokens(prompt_tokens=1)}
    unpatched = sample(model, latent, positive, negative, cfg=3.0, steps=2)
    assert not torch.equal(unpatched[..., :8], sample(model, latent, other_second_reference(positive),
                                                      other_second_reference(negative), cfg=3.0, steps=2)[..., :8])


def test_batched_cfg_rows_share_the_mask(model, latent, positive):
    """A negative of the same length is batched with the positive: one call of two rows, the property holds."""
    negative = qwen_conditioning(70, text_tokens(), REF_SIZES)
    probe = BatchProbe()
    clone, _ = patched(model, qwen.QwenEditAdapter(), [LEFT, RIGHT], probe=probe)
    base = sample(clone, latent, positive, negative, cfg=3.0)
    changed = sample(clone, latent, other_second_reference(positive), other_second_reference(negative), cfg=3.0)
    assert 2 in probe.batches
    assert torch.equal(base[..., :8], changed[..., :8])


def test_optimised_path_equals_dense(model, latent, positive, negative):
    for stage_ratio in (1.0, 0.0):
        clone, _ = patched(model, qwen.QwenEditAdapter(), [LEFT, (0.25, 0.25, 1.0, 0.75)], first_stage_ratio=stage_ratio)
        fast = sample(clone, latent, positive, negative, cfg=2.0, steps=2)
        dense = sample(with_dense_attention(clone), latent, positive, negative, cfg=2.0, steps=2)
        assert (fast - dense).abs().max() <= 1e-5
