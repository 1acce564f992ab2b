"""FastComposer with boxes: each person's swapped attention runs only on the pixels its box weighs.

The patch is checked against the straightforward computation (every positive pixel attends
with the person's token swapped, then ``text + w * (swapped - text)`` by the box weights) on
random tensors: feathered and overlapping boxes, several people, two Apply nodes on one key,
CFG batches with negative rows in any order, batches of several images, a box covering the
whole grid, a patch of another pack wrapped. The same output, and no more query pixels
computed than the boxes cover.
"""

from __future__ import annotations

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.ops
from devkit.pack import pack
from devkit.tiny_models import fill_seeded

fusion_patch = pack("attention_patches.kinds.fastcomposer.fusion_patch")
fusion = pack("models.fastcomposer.fusion")
routing = pack("attention_patches.routing")
patch_mod = pack("attention_patches.patch")

CONTEXT_DIM, HEADS, DIM_HEAD, QUERY_DIM, TOKENS = 32, 4, 8, 24, 20
TOLERANCE = 1e-6


def cross_attention(seed: int = 0):
    attn2 = comfy_attention.CrossAttention(QUERY_DIM, CONTEXT_DIM, heads=HEADS, dim_head=DIM_HEAD,
                                           operations=comfy.ops.disable_weight_init)
    return fill_seeded(attn2, seed).eval().requires_grad_(False)


def people(boxes, positions, feather=0.0, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return fusion_patch.FusedPeople(postfuse=fusion.PostfuseModule(CONTEXT_DIM), embeddings=torch.randn(len(boxes), CONTEXT_DIM, generator=generator),
                                    positions=positions, sigma_range=(float("inf"), 0.0), boxes=torch.tensor(boxes), feather=feather)


def expected(q, k, v, attn2, groups, height, width, downscale):
    """Every positive pixel's swapped attention, blended by the box weights (the computation the patch restricts)."""
    out = comfy_attention.optimized_attention(q, k, v, HEADS)
    for group, index, fused in groups:
        routes = routing.box_routes(group.boxes, height, width, group.feather / max(downscale, 1.0))
        weights = (routes / routes.sum(dim=0, keepdim=True).clamp(min=1.0)).unsqueeze(-1)
        fused_k, fused_v = attn2.to_k(fused), attn2.to_v(fused)
        text = out[index]
        blended = text.clone()
        for s, position in enumerate(group.positions):
            k_s, v_s = k[index].clone(), v[index].clone()
            k_s[:, position], v_s[:, position] = fused_k[:, s], fused_v[:, s]
            blended += weights[s] * (comfy_attention.optimized_attention(q[index], k_s, v_s, HEADS) - text)
        out[index] = blended
    return out


def layer_call(groups_spec, cond_or_uncond, per_chunk, height, width, downscale=1.0, base=None, seed=3):
    """One attn2 call of a patch holding ``groups_spec`` people groups; returns the patch's and the expected output."""
    attn2 = cross_attention()
    generator = torch.Generator().manual_seed(seed)
    batch = per_chunk * len(cond_or_uncond)
    q = torch.randn(batch, height * width, HEADS * DIM_HEAD, generator=generator)
    context = torch.randn(batch, TOKENS, CONTEXT_DIM, generator=generator)
    k, v = attn2.to_k(context), attn2.to_v(context)
    rows = patch_mod.chunk_rows(cond_or_uncond, batch)
    index = torch.arange(batch)[rows]
    groups = []
    for group in groups_spec:
        fused = torch.randn(index.numel(), len(group.positions), CONTEXT_DIM, generator=generator)
        groups.append((group, index, fused))
    patch = fusion_patch.BoxedFusionAttention(("input", 1, 0), attn2, tuple(g for g, _, _ in groups), base=base)
    options = {"n_heads": HEADS, "activations_shape": [batch, q.shape[-1], height, width],
               "original_shape": [batch, 4, round(height * downscale), round(width * downscale)],
               "cond_or_uncond": cond_or_uncond,
               fusion_patch.FUSED_KEY: {id(g): (i, f) for g, i, f in groups}}
    with torch.no_grad():
        out = patch(q, k, v, options)
        reference = expected(q, k, v, attn2, groups, height, width, downscale)
        plain = comfy_attention.optimized_attention(q, k, v, HEADS)
    return out, reference, plain, index, groups


SIDE_BY_SIDE = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))
OVERLAPPING = ((0.0, 0.1, 0.6, 0.9), (0.4, 0.0, 1.0, 0.7), (0.3, 0.5, 0.8, 1.0))
CASES = {
    "one person, hard box": ([((0.25, 0.25, 0.75, 0.75),)], (0,), [1, 0], 1, 8, 8, 0.0),
    "two people side by side, CFG": ([SIDE_BY_SIDE], (2, 5), [0, 1], 1, 8, 8, 0.0),
    "three overlapping, feathered, batch 2": ([OVERLAPPING], (1, 4, 7), [1, 0], 2, 6, 10, 2.0),
    "feather reaching the whole grid": ([((0.4, 0.4, 0.6, 0.6), (0.0, 0.0, 0.2, 0.2))], (3, 9), [0, 1], 1, 4, 4, 8.0),
    "a box over the whole grid": ([((0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 1.0, 1.0))], (2, 6), [0], 2, 5, 7, 0.0),
    "two Apply nodes, positive rows apart": ([SIDE_BY_SIDE, ((0.1, 0.2, 0.9, 0.6),)], (4, 11), [0, 1, 0], 2, 8, 6, 1.5),
}


def build(case):
    specs, positions, cond_or_uncond, per_chunk, height, width, feather = CASES[case]
    groups, used = [], 0
    for i, boxes in enumerate(specs):
        groups.append(people(boxes, positions[used:used + len(boxes)], feather=feather, seed=10 + i))
        used += len(boxes)
    return groups, cond_or_uncond, per_chunk, height, width


def covered_pixels(groups, height, width, downscale):
    """[N] bool: pixels some person's box weighs at this grid."""
    covered = torch.zeros(height * width, dtype=torch.bool)
    for group in groups:
        covered |= (routing.box_routes(group.boxes, height, width, group.feather / max(downscale, 1.0)) > 0).any(dim=0)
    return covered


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("downscale", [1.0, 2.0])
def test_same_output_as_every_pixel_computed(case, downscale):
    groups, cond_or_uncond, per_chunk, height, width = build(case)
    out, reference, plain, index, _ = layer_call(groups, cond_or_uncond, per_chunk, height, width, downscale)
    assert (out - reference).abs().max() <= TOLERANCE
    negative = torch.ones(out.shape[0], dtype=torch.bool)
    negative[index] = False
    assert torch.equal(out[negative], plain[negative])
    covered = covered_pixels(groups, height, width, downscale)
    positive = out[index]
    # every covered pixel of every positive row got its fused attention (a skipped pixel would keep the text output)
    assert ((positive[:, covered] - plain[index][:, covered]).abs().amax(dim=-1) > 1e-4).all()
    assert torch.equal(positive[:, ~covered], plain[index][:, ~covered])


def test_only_the_covered_pixels_are_computed(monkeypatch):
    groups, cond_or_uncond, per_chunk, height, width = build("three overlapping, feathered, batch 2")
    queries = []
    original = comfy_attention.optimized_attention

    def counting(q, k, v, heads, **kwargs):
        queries.append(tuple(q.shape[:2]))
        return original(q, k, v, heads, **kwargs)

    monkeypatch.setattr(comfy_attention, "optimized_attention", counting)
    with torch.no_grad():
        patch_out, *_ = layer_call(groups, cond_or_uncond, per_chunk, height, width, downscale=1.0)
    monkeypatch.undo()
    group = groups[0]
    routes = routing.box_routes(group.boxes, height, width, group.feather)
    batch, positive_rows = per_chunk * len(cond_or_uncond), per_chunk
    patch_calls = queries[:1 + len(group.positions)]  # the patch's calls come first, then the reference's
    assert patch_calls[0] == (batch, height * width)  # the text attention of the whole batch
    assert patch_calls[1:] == [(positive_rows, int((route > 0).sum())) for route in routes]
    assert all(n < height * width for _, n in patch_calls[1:])
    assert torch.isfinite(patch_out).all()


def test_covers_are_the_box_weights_and_cached_per_grid():
    group = people(OVERLAPPING, (1, 4, 7), feather=2.0)
    covers = group.box_covers(6, 10, 1.0, torch.device("cpu"))
    routes = routing.box_routes(group.boxes, 6, 10, 2.0)
    weights = routes / routes.sum(dim=0, keepdim=True).clamp(min=1.0)
    for cover, person in zip(covers, weights):
        full = torch.zeros(60)
        full[cover.pixels] = cover.weights[:, 0]
        assert torch.equal(full, person)
        assert torch.equal(cover.pixels, (person > 0).nonzero()[:, 0])
    assert group.box_covers(6, 10, 1.0, torch.device("cpu")) is covers
    whole = people(((0.0, 0.0, 1.0, 1.0),), (2,)).box_covers(4, 4, 1.0, torch.device("cpu"))
    assert whole[0].pixels is None and torch.equal(whole[0].weights, torch.ones(16, 1))
    group.release_caches()
    assert not group._routes


def test_a_wrapped_patch_still_sees_the_whole_batch_and_grid():
    groups, cond_or_uncond, per_chunk, height, width = build("two people side by side, CFG")
    seen = []

    def foreign(q, k, v, extra_options):
        seen.append(tuple(q.shape[:2]))
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])

    out, reference, *_ = layer_call(groups, cond_or_uncond, per_chunk, height, width, base=foreign)
    assert (out - reference).abs().max() <= TOLERANCE
    assert seen == [(per_chunk * len(cond_or_uncond), height * width)] * (1 + len(groups[0].positions))
