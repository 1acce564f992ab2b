"""LAMIC on FLUX.2 [dev], proved by properties through ComfyUI's sampler on a tiny real-topology model."""

from __future__ import annotations

import pytest
import torch

from lamic.incontext_support import LEFT, RIGHT, BatchProbe, patched, sample, with_dense_attention, with_reference
from devkit.incontext_tiny import flux2_conditioning, seeded, tiny_flux2
from devkit.pack import pack

flux2 = pack("attention_patches.kinds.lamic.flux2")

REF_SIZES = [(64, 64), (48, 80)]  # pixels; latents 4x4 and 3x5


@pytest.fixture(scope="module")
def model():
    """One double block: the padding group (EPrt) sees every token, so through a second block any token reaches any
    other in two hops; the property concerns the attention the mask restricts, i.e. one block's outputs."""
    return tiny_flux2(double=1, single=0)


@pytest.fixture(scope="module")
def latent():
    return torch.zeros(1, 128, 8, 8)  # 128 x 128 px: 8 x 8 tokens; LEFT = latent columns 0..3


@pytest.fixture(scope="module")
def positive():
    return flux2_conditioning(1, 20, REF_SIZES)


@pytest.fixture(scope="module")
def negative():
    return flux2_conditioning(50, 7, REF_SIZES)


def other_second_reference(conditioning):
    return with_reference(conditioning, 1, seeded(99, *conditioning[0][1]["reference_latents"][1].shape))


def test_all_allowed_layout_is_the_unpatched_model(latent, positive):
    """Strength 0 (soft mode) allows every pair: bit-identical to no patch, on the two-block model, CFG rows batched."""
    model = tiny_flux2()
    negative = flux2_conditioning(70, 20, REF_SIZES)
    clone, classes_for = patched(model, flux2.Flux2Adapter(), [LEFT, RIGHT], strengths=(0.0, 0.0))
    assert torch.equal(sample(clone, latent, positive, negative, cfg=2.0, steps=2),
                       sample(model, latent, positive, negative, cfg=2.0, steps=2))
    assert classes_for.layouts


def test_another_reference_cannot_reach_a_box(model, latent, positive, negative):
    """Stage 1: box 1's tokens see only reference 1; replacing reference 2 leaves them bit-identical in both CFG rows
    (batched with different left padding, so run row by row with their own masks) and changes box 2."""
    probe = BatchProbe()
    clone, classes_for = patched(model, flux2.Flux2Adapter(), [LEFT, RIGHT], probe=probe)
    base = sample(clone, latent, positive, negative, cfg=3.0)
    changed = sample(clone, latent, other_second_reference(positive), other_second_reference(negative), cfg=3.0)
    assert torch.equal(base[..., :4], changed[..., :4])
    assert not torch.allclose(base[..., 4:], changed[..., 4:])
    assert set(probe.batches) == {1}
    paddings = {layout.text_groups.spans[0].end for layout in classes_for.layouts}
    assert paddings == {512 - 20, 512 - 7}
    unpatched = sample(model, latent, positive, negative, cfg=3.0)
    assert not torch.equal(unpatched[..., :4], sample(model, latent, other_second_reference(positive),
                                                      other_second_reference(negative), cfg=3.0)[..., :4])


def test_rows_with_equal_padding_stay_batched(model, latent, positive):
    probe = BatchProbe()
    clone, _ = patched(model, flux2.Flux2Adapter(), [LEFT, RIGHT], probe=probe)
    negative = flux2_conditioning(70, 20, REF_SIZES)
    base = sample(clone, latent, positive, negative, cfg=3.0)
    changed = sample(clone, latent, other_second_reference(positive), other_second_reference(negative), cfg=3.0)
    assert set(probe.batches) == {2}
    assert torch.equal(base[..., :4], changed[..., :4])


def test_optimised_path_equals_dense(latent, positive, negative):
    model = tiny_flux2()
    for stage_ratio in (1.0, 0.0):
        clone, _ = patched(model, flux2.Flux2Adapter(), [LEFT, (0.25, 0.25, 1.0, 0.75)], first_stage_ratio=stage_ratio)
        fast = sample(clone, latent, positive, negative, cfg=2.0, steps=2)
        dense = sample(with_dense_attention(clone), latent, positive, negative, cfg=2.0, steps=2)
        assert (fast - dense).abs().max() <= 1e-5
