"""LAMIC's pure math beyond the goldens: random layouts, 1..6 references, overlapping boxes, MASK
regions, any aspect, the text edge cases, the soft mode, the stage rule and the size chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from msp_package import pack

text = pack("models.lamic.text")
regions = pack("models.lamic.regions")
groups_mod = pack("models.lamic.groups")
schedule = pack("models.lamic.schedule")
references = pack("models.lamic.references")

Group = groups_mod.Group


@pytest.fixture(scope="module")
def t5_tokenize():
    import comfy.text_encoders.flux

    return text.comfy_tokenize(comfy.text_encoders.flux.T5XXLTokenizer())


def char_tokenize(piece: str) -> list[int]:
    """A stand-in tokenizer: one token per character and an end token 1."""
    return [5] * len(piece) + [1]


def brute_force_mask(token_groups, stage: int, membership: torch.Tensor) -> torch.Tensor:
    """M[q, k] straight from the definition: any group of q and any group of k whose rule allows it."""
    size = membership.shape[1]
    sets = [[g for g, row in zip(token_groups.groups, membership[:, t]) if row] for t in range(size)]
    return torch.tensor([[any(groups_mod.allows(g, h, stage) for g in sets[q] for h in sets[k]) for k in range(size)]
                         for q in range(size)])


def text_length(token_groups) -> int:
    return int((token_groups.membership[[g.kind in ("SAD", "CEI", "EPrt") for g in token_groups.groups]].any(0)).sum())


# --- random layouts ---------------------------------------------------------------------------

@st.composite
def layouts(draw):
    refs = draw(st.integers(1, 6))
    grid = regions.RegionGrid(draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    region_list = []
    for _ in range(refs):
        kind = draw(st.sampled_from(["box", "pixel_box", "mask", "whole"]))
        if kind == "box":
            x1, x2 = sorted(draw(st.floats(0, 1)) for _ in range(2))
            y1, y2 = sorted(draw(st.floats(0, 1)) for _ in range(2))
            region_list.append(regions.box_region(grid, (x1, y1, x2, y2)))
        elif kind == "pixel_box":
            x1, x2 = sorted(draw(st.integers(2, grid.cells_w * 8 + 20)) for _ in range(2))
            y1, y2 = sorted(draw(st.integers(2, grid.cells_h * 8 + 20)) for _ in range(2))
            region_list.append(regions.box_region(grid, (x1, y1, x2, y2)))
        elif kind == "mask":
            seed = draw(st.integers(0, 2 ** 16))
            mask = torch.rand(draw(st.integers(1, 24)), draw(st.integers(1, 24)), generator=torch.Generator().manual_seed(seed))
            region_list.append(regions.mask_region(grid, mask))
        else:
            region_list.append(regions.whole_region(grid))
    subtract = [draw(st.lists(st.integers(1, refs), max_size=refs)) for _ in range(refs)]
    counts = [draw(st.integers(1, 4)) for _ in range(refs + 1)]
    length = sum(counts) + draw(st.integers(0, 3))
    names = [f"SAD_{i}" for i in range(1, refs + 1)] + ["CEI"]
    layout = text.text_layout(list(zip(names, counts)), length, draw(st.sampled_from(["right", "left"])))
    ref_tokens = [draw(st.integers(1, 5)) for _ in range(refs)]
    return groups_mod.token_groups(layout, region_list, ref_tokens, subtract), region_list, subtract


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_class_mask_equals_dense_and_definition(case):
    token_groups, region_list, subtract = case
    for stage, deoverlap in ((1, True), (1, False), (2, True)):
        mask = groups_mod.stage_mask(token_groups, stage, deoverlap=deoverlap)
        membership = token_groups.membership_stage1 if stage == 1 and deoverlap else token_groups.membership
        dense = groups_mod.dense_mask(membership, groups_mod.rule_table(token_groups.groups, stage))
        assert torch.equal(mask.dense(), dense)
        assert torch.equal(dense, brute_force_mask(token_groups, stage, membership))
        assert mask.allowed.any(1).all(), "a class attends to nothing"
        assert mask.allowed.shape[0] == len(set(map(tuple, membership.T.tolist())))
        refs = len(region_list)
        uniform = groups_mod.soft_bias(mask, token_groups.groups, [0.3] * refs)
        assert torch.allclose(uniform, torch.where(mask.allowed, 0.0, math.log1p(-0.3)).float())
    stage2 = groups_mod.stage_mask(token_groups, 2).dense()
    assert torch.equal(stage2, stage2 & groups_mod.stage_mask(token_groups, 2).dense())
    covered_stage1 = token_groups.membership_stage1[[g.kind == "Reg" for g in token_groups.groups]].any(0)
    orphans = torch.stack(region_list).any(0) & ~covered_stage1[text_length(token_groups):][:region_list[0].numel()]
    uncovered = regions.uncontrolled_region(region_list)
    assert (Group("UReg") in token_groups.groups) == (uncovered is not None or bool(orphans.any()))
    for i, others in enumerate(subtract):  # stage-1 regions lose exactly the listed original regions
        row = token_groups.groups.index(Group("Reg", i + 1))
        lost = token_groups.membership[row] & ~token_groups.membership_stage1[row]
        listed = [token_groups.membership[token_groups.groups.index(Group("Reg", j))] for j in others if j != i + 1]
        assert torch.equal(lost, token_groups.membership[row] & torch.stack(listed).any(0) if listed else torch.zeros_like(lost))


def test_mutual_deoverlap_leaves_no_token_without_a_group():
    whole = regions.whole_region(regions.RegionGrid(2, 4))
    layout = text.text_layout([("SAD_1", 1), ("SAD_2", 1), ("CEI", 1)], 3)
    token_groups = groups_mod.token_groups(layout, [whole, whole], [1, 1], [[2], [1]])
    ureg = token_groups.groups.index(Group("UReg"))
    assert not token_groups.membership[ureg].any() and token_groups.membership_stage1[ureg, 3:5].all()
    assert token_groups.membership_stage1.any(0).all()
    assert groups_mod.stage_mask(token_groups, 1).allowed.any(1).all()


def test_stage_one_isolates_regions_and_stage_two_opens_them():
    grid = regions.RegionGrid(4, 8)  # 2 x 4 tokens
    left, right = regions.box_region(grid, (0, 0, 0.5, 1)), regions.box_region(grid, (0.5, 0, 1, 1))
    layout = text.text_layout([("SAD_1", 2), ("SAD_2", 2), ("CEI", 2)], 8)
    token_groups = groups_mod.token_groups(layout, [left, right], [3, 3])
    assert not token_groups.membership[token_groups.groups.index(Group("UReg"))].any()  # present though empty
    one, two = groups_mod.stage_mask(token_groups, 1).dense(), groups_mod.stage_mask(token_groups, 2).dense()
    target = slice(8, 16)
    left_tokens = torch.arange(8, 16)[left]
    right_tokens = torch.arange(8, 16)[right]
    ref1, ref2 = torch.arange(16, 19), torch.arange(19, 22)
    assert not one[left_tokens][:, right_tokens].any() and two[left_tokens][:, right_tokens].all()
    assert one[left_tokens][:, ref1].all() and not one[left_tokens][:, ref2].any() and not two[left_tokens][:, ref2].any()
    assert not one[ref1][:, ref2].any() and not one[4:6, target].any() and two[4:6, target].all()  # CEI -> image
    assert one[6:8].all() and one[:, 6:8].all()  # EPrt is connected both ways in both stages


# --- regions ------------------------------------------------------------------------------------

def test_box_rules():
    grid = regions.RegionGrid.for_image(96, 96)  # 12 x 12 cells, 6 x 6 tokens
    assert regions.box_cells(grid, (0.0, 0.25, 0.6, 1.0)) == (0, 3, 7, 12)  # int(0.6 * 12) = 7
    # an odd right edge drops the straddling token column (mean 0.5 is not > 0.5)
    assert regions.box_region(grid, (0.0, 0.0, 0.6, 1.0)).reshape(6, 6)[0].tolist() == [True] * 3 + [False] * 3
    assert regions.box_cells(grid, (0, 0, 60, 96)) == (0, 0, 7, 12)  # pixels // 8
    assert regions.box_cells(grid, (8, 8, 500, 300)) == (1, 1, 12, 12)  # only x2, y2 clamp
    assert regions.box_cells(grid, (0, 0, 1, 1)) == (0, 0, 12, 12)  # all in [0, 1]: normalised
    assert not regions.box_region(grid, (0.5, 0.5, 0.5, 0.9)).any()
    for bad in ((-1, 0, 10, 10), (0, 0, float("nan"), 1), (0, 0, 1)):
        with pytest.raises(ValueError):
            regions.box_region(grid, bad)


@pytest.mark.parametrize("height,width", [(96, 96), (64, 160), (208, 48), (104, 120)])
def test_mask_regions_any_aspect(height, width):
    grid = regions.RegionGrid.for_image(height, width)
    mask = torch.zeros(height, width)
    mask[: height // 2, width // 4:] = 1  # edges on token boundaries when the sizes allow
    native = regions.mask_region(grid, mask[None])
    official = regions.mask_image_region(grid, (mask * 255).to(torch.uint8).numpy())
    rgb = np.repeat((mask * 255).to(torch.uint8).numpy()[..., None], 3, -1)
    assert torch.equal(official, regions.mask_image_region(grid, rgb))
    box = regions.box_region(grid, (width // 4, 0, width, height // 2))
    assert native.numel() == grid.tokens == grid.tokens_h * grid.tokens_w
    if height % 32 == 0 and width % 64 == 0:
        assert torch.equal(native, box) and torch.equal(official, box)
    with pytest.raises(ValueError):
        regions.mask_region(grid, torch.zeros(2, 3, 4))


def test_odd_grids_and_other_patch_sizes():
    odd = regions.RegionGrid(13, 5)  # ComfyUI pads to 7 x 3 tokens
    assert (odd.tokens_h, odd.tokens_w) == (7, 3)
    assert regions.box_region(odd, (0, 0, 1, 1)).all()  # the padded tokens' real cells are inside
    flux2 = regions.RegionGrid.for_image(96, 64, cell_px=16, patch=1)
    assert (flux2.tokens_h, flux2.tokens_w) == (6, 4)
    assert regions.box_region(flux2, (0, 0, 40, 96)).reshape(6, 4)[0].tolist() == [True, True, False, False]
    kontext_like = regions.RegionGrid.for_image(96, 64)  # the same tokens on the 8 px / patch 2 grid
    assert kontext_like.tokens == flux2.tokens


def test_uncontrolled_region_and_deoverlap():
    a, b = torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    assert regions.uncontrolled_region([a, b]).tolist() == [False, False, False, True]
    assert regions.uncontrolled_region([a, torch.ones(4, dtype=torch.bool)]) is None
    inner = torch.tensor([0, 1, 0, 0], dtype=torch.bool)
    out = regions.deoverlap([a, inner, b], [[], [1, 2], [1]])
    assert out[0].tolist() == a.tolist() and not out[1].any() and out[2].tolist() == [False, False, True, False]
    with pytest.raises(ValueError):
        regions.deoverlap([a, b], [[3]])


# --- text ---------------------------------------------------------------------------------------

def test_text_layouts_generic():
    right = text.text_layout([("SAD_1", 3), ("CEI", 2)], 8)
    assert [(s.group, s.start, s.end) for s in right.spans] == [("SAD_1", 0, 3), ("CEI", 3, 5), ("EPrt", 5, 8)]
    left = text.text_layout([("SAD_1", 3), ("CEI", 2)], 8, "left")
    assert [(s.group, s.start, s.end) for s in left.spans] == [("EPrt", 0, 3), ("SAD_1", 3, 6), ("CEI", 6, 8)]
    template = text.text_layout([("EPrt", 2), ("SAD_1", 3), ("CEI", 2), ("EPrt", 1)], 8, "none")
    assert template.groups() == ["EPrt", "SAD_1", "CEI"]
    assert [g.name for g in groups_mod.token_groups(template, [torch.ones(1, dtype=torch.bool)], [1]).groups] == \
        ["SAD_1", "CEI", "EPrt", "Reg_1", "Ref_1"]
    assert "EPrt" not in text.text_layout([("SAD_1", 3), ("CEI", 5)], 8).groups()
    with pytest.raises(text.TextTooLongError):
        text.text_layout([("SAD_1", 5), ("CEI", 5)], 8)
    with pytest.raises(ValueError):
        text.text_layout([("SAD_1", 5)], 8, "none")
    with pytest.raises(ValueError):
        text.TextLayout(8, (text.TextSpan("SAD_1", 0, 3), text.TextSpan("CEI", 4, 8)))
    with pytest.raises(ValueError):
        text.TextLayout(2, (text.TextSpan("prompt", 0, 2),))


def test_sad_text_and_joined_prompt():
    assert text.sad_text({"id": "a cat", "desc": "keep appearance"}) == "a cat,keep appearance."
    assert text.sad_text("a dog.") == "a dog."
    assert text.joined_prompt(["a.", "b."], "") == "a.b."


def test_exact_spans_follow_the_joined_tokens(t5_tokenize):
    pieces = ["a sea turtle,keep appearance.", "a man,keep appearance.", "a beach"]
    joined = list(t5_tokenize("".join(pieces)))
    official = text.piece_token_counts(t5_tokenize, pieces)
    exact = text.joined_token_counts(t5_tokenize, pieces)
    assert sum(exact) == len(joined) < sum(official)  # "appearance.a" loses the "▁" token
    start = 0
    for k, (piece, count) in enumerate(zip(pieces, exact)):
        own = list(t5_tokenize(piece))
        own = own if k == len(pieces) - 1 else own[:-1]  # only the last piece owns the end token
        owned = joined[start:start + count]
        assert owned == own or (k > 0 and own[0] == 3 and owned == own[1:]), piece  # or it lost its "▁" to the merge
        start += count
    layout = text.lamic_text_layout(t5_tokenize, pieces[:2], pieces[2], official=False)
    assert [s.end - s.start for s in layout.spans][:3] == exact


def test_text_over_the_context_is_a_named_error():
    with pytest.raises(text.TextTooLongError, match="512"):
        text.lamic_text_layout(char_tokenize, ["x" * 300], "y" * 300)
    with pytest.raises(text.TextTooLongError):
        text.comfy_tokenize(type("T", (), {"embedding_key": "t5xxl"})())("x" * (text.MAX_TEXT_CHARS + 1))


def test_exactly_full_text_official_misalignment_and_pack_fix():
    sads, cei = ["x" * 200, "x" * 100], "x" * 209  # 201 + 101 + 210 = 512 tokens
    grid = regions.RegionGrid(2, 4)
    region_list = [regions.box_region(grid, (0, 0, 0.5, 1)), regions.box_region(grid, (0.5, 0, 1, 1))]

    official = text.lamic_text_layout(char_tokenize, sads, cei)
    assert official.spans[-1] == text.TextSpan("EPrt", 512, 512)
    token_groups = groups_mod.token_groups(official, region_list, [2, 2])
    assert groups_mod.has_empty_padding(token_groups)
    rules = groups_mod.rule_table(token_groups.groups, 2, empty_padding_quirk=True)
    assert not rules[-1].any() and not rules[:, -1].any()  # Ref_2 gets no rules at all
    reg1 = token_groups.groups.index(Group("Reg", 1))
    aligned = groups_mod.rule_table(token_groups.groups, 2)
    assert torch.equal(rules[reg1, :reg1 - 1], aligned[reg1 + 1, :reg1 - 1])  # Reg_1 takes Reg_2's rules
    dense = groups_mod.stage_mask(token_groups, 2).dense()
    assert not dense[-2:].any(), "the official table leaves reference 2's tokens with no key"

    with pytest.raises(text.TextTooLongError):  # the official count has three end tokens, the joined text one
        text.lamic_text_layout(char_tokenize, sads, cei + "xx")
    fixed = text.lamic_text_layout(char_tokenize, sads, cei + "xx", official=False)
    assert "EPrt" not in fixed.groups() and fixed.spans[-1].end == 512
    fixed_groups = groups_mod.token_groups(fixed, region_list, [2, 2])
    for stage in (1, 2):
        assert groups_mod.stage_mask(fixed_groups, stage).allowed.any(1).all()


def test_token_groups_rejects_mismatches():
    layout = text.text_layout([("SAD_1", 1), ("SAD_2", 1), ("CEI", 1)], 4)
    whole = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="one region per reference"):
        groups_mod.token_groups(layout, [whole, whole], [1])
    with pytest.raises(ValueError, match="SAD_2"):
        groups_mod.token_groups(layout, [whole], [1])


# --- soft mode ----------------------------------------------------------------------------------

def test_soft_bias_between_isolation_and_none():
    grid = regions.RegionGrid(4, 8)
    region_list = [regions.box_region(grid, (0, 0, 0.25, 1)), regions.box_region(grid, (0.5, 0, 1, 1))]  # UReg between
    layout = text.text_layout([("SAD_1", 1), ("SAD_2", 1), ("CEI", 1)], 4)
    token_groups = groups_mod.token_groups(layout, region_list, [2, 2])
    mask = groups_mod.stage_mask(token_groups, 1)
    full = groups_mod.soft_bias(mask, token_groups.groups, [1.0, 1.0])
    assert torch.equal(full == float("-inf"), ~mask.allowed) and not full[mask.allowed].any()
    assert not groups_mod.soft_bias(mask, token_groups.groups, [0.0, 0.0]).any()

    bias = groups_mod.soft_bias(mask, token_groups.groups, [0.5, 1.0]).to(torch.float64)
    dense = bias[mask.class_ids][:, mask.class_ids]
    cei, reg1 = 2, 4 + int(region_list[0].nonzero()[0])
    ref1, ref2 = 4 + 8, 4 + 8 + 2
    ureg = 4 + int((~(region_list[0] | region_list[1])).nonzero()[0])
    assert dense[cei, reg1] == pytest.approx(math.log(0.5))  # touches reference 1 only
    assert dense[ref1, ref2] == float("-inf")  # touches 1 and 2: the stronger wins
    assert dense[cei, ureg] == float("-inf")  # touches no reference: the strongest of all
    with pytest.raises(ValueError):
        groups_mod.soft_bias(mask, token_groups.groups, [1.5, 1.0])
    for wrong in ([1.0], [1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="one strength"):
            groups_mod.soft_bias(mask, token_groups.groups, wrong)


# --- schedule -----------------------------------------------------------------------------------

def test_stage_of_sigma_inside_steps_and_partial_runs():
    sigmas = torch.linspace(1, 0, 11)  # 10 steps
    assert [schedule.stage_of_sigma(s, sigmas, 0.25) for s in sigmas[:-1]] == [1, 1] + [2] * 8
    midpoint = (sigmas[1] + sigmas[2]) / 2  # a second-order sampler's inner evaluation belongs to step 1
    assert schedule.stage_of_sigma(midpoint, sigmas, 0.25) == 1
    assert schedule.stage_of_sigma(torch.stack([sigmas[2], sigmas[2]]), sigmas, 0.25) == 2  # a batch of rows
    assert schedule.stage_of_sigma(sigmas[0] * 1.5, sigmas, 0.25) == 1
    tail = sigmas[5:]  # denoise 0.5: the run's own first int(0.25 * 5) = 1 step
    assert [schedule.stage_of_sigma(s, tail, 0.25) for s in tail[:-1]] == [1, 2, 2, 2, 2]
    assert schedule.stage_of_step(0, 20, 0.05) == 1 and schedule.stage_of_step(1, 20, 0.05) == 2
    with pytest.raises(ValueError):
        schedule.stage_of_sigma(0.5, torch.tensor([1.0]), 0.1)


# --- references ---------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width,to_area", [(70, 90, None), (50, 40, 2304), (1000, 333, 262144), (16, 300, None)])
def test_reference_chain_sizes_and_pixels(height, width, to_area):
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(height))
    sizes = references.reference_sizes(height, width, to_area)
    resized = references.resize_reference(image, to_area)
    assert tuple(resized.shape[1:3]) == sizes.final and all(v % 16 == 0 for v in sizes.final)
    assert sizes.tokens == (sizes.final[0] // 16, sizes.final[1] // 16)
    if to_area is None and (height, width) == sizes.final:
        assert torch.equal(resized, image)  # already a multiple of 16: a copy, no resampling


def test_reference_size_errors():
    with pytest.raises(ValueError, match="at least 16x16"):
        references.reference_sizes(12, 200)
    with pytest.raises(ValueError, match="to_area"):
        references.reference_sizes(64, 64, 0)
    with pytest.raises(ValueError, match="to_area"):
        references.reference_sizes(64, 64, 1e12)


@pytest.mark.parametrize("height,width", [(96, 96), (600, 1600), (1600, 600), (17, 4000)])
def test_output_size_any_aspect(height, width):
    out_h, out_w = references.output_size(height, width)
    assert out_h % 16 == 0 and out_w % 16 == 0
    assert abs(out_h * out_w - 1024 ** 2) / 1024 ** 2 < 0.06 or min(out_h, out_w) < 256
    assert abs(out_w / out_h - width / height) / (width / height) < 0.2 or min(out_h, out_w) < 256


def test_pack_tokens_order_and_enhance():
    import einops

    latent = torch.randn(2, 4, 6, 8)
    assert torch.equal(references.pack_tokens(latent), einops.rearrange(latent, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2))
    assert torch.equal(references.pack_tokens(latent, 1), einops.rearrange(latent, "b c h w -> b (h w) c"))
    assert torch.allclose(references.enhance_latent(latent, 1.3), latent * 1.3)
    shifted = references.enhance_latent(latent, 1.3, 0.1159)
    assert torch.allclose((shifted - 0.1159) * 0.3611, (latent - 0.1159) * 0.3611 * 1.3, atol=1e-6)
    assert references.enhance_latent(latent, 1.0) is latent
