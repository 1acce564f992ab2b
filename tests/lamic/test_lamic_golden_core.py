"""Parity of LAMIC's pure math (models/lamic) with the official code's goldens, fp32.

Every case name, size, count and setting comes from the golden set's cases.json, so the tests hold
for any golden set generated the same way. Ids, memberships and masks must match exactly, floats to
1e-4 (GOLDEN_TOLERANCE).
"""

from __future__ import annotations

import pytest
import torch

from helpers import GOLDEN_TOLERANCE, assert_close
from msp_package import pack

pytestmark = pytest.mark.golden

text = pack("models.lamic.text")
regions = pack("models.lamic.regions")
groups_mod = pack("models.lamic.groups")
schedule = pack("models.lamic.schedule")
references = pack("models.lamic.references")


@pytest.fixture(scope="module")
def lamic(golden_set):
    return golden_set("lamic")


@pytest.fixture(scope="module")
def grouping(lamic):
    return lamic.tensors("grouping")


@pytest.fixture(scope="module")
def flux_tokenizer():
    import comfy.text_encoders.flux

    return comfy.text_encoders.flux.FluxTokenizer()


def reference_inputs(case: dict) -> list[dict]:
    return [case["inputs"][f"ref_img_{i}"] for i in range(1, case["n_refs"] + 1)]


def case_groups(lamic, grouping, flux_tokenizer, name: str):
    """The pack's TokenGroups for one official input dict."""
    case = lamic.cases["grouping"][name]
    refs = reference_inputs(case)
    height, width = case["output_hw"]
    grid = regions.RegionGrid.for_image(height, width)
    layout = text.lamic_text_layout(text.comfy_tokenize(flux_tokenizer.t5xxl), [text.sad_text(r["SAD"]) for r in refs],
                                    case["inputs"]["CEI"])
    region_list = []
    for i, ref in enumerate(refs, 1):
        if "mask_path" in ref:
            region_list.append(regions.mask_image_region(grid, grouping[f"{name}.in.ref{i}.mask_u8"].numpy()))
        elif "bbox" in ref:
            region_list.append(regions.box_region(grid, ref["bbox"]))
        else:
            region_list.append(regions.whole_region(grid))
    sizes = [references.reference_sizes(*grouping[f"{name}.in.ref{i}.image_u8"].shape[:2], ref.get("to_area"))
             for i, ref in enumerate(refs, 1)]
    tokens = [s.tokens[0] * s.tokens[1] for s in sizes]
    return layout, sizes, groups_mod.token_groups(layout, region_list, tokens, [r.get("de-overlap", ()) for r in refs])


def test_text_pieces_ids_and_spans(lamic, grouping, flux_tokenizer):
    tokenize = text.comfy_tokenize(flux_tokenizer.t5xxl)
    for name, case in lamic.cases["grouping"].items():
        sads = [text.sad_text(r["SAD"]) for r in reference_inputs(case)]
        assert sads == case["sad_strings"], name
        joined = text.joined_prompt(sads, case["inputs"]["CEI"])
        assert joined == case["total_prompts"], name
        assert [list(tokenize(p)) for p in [*sads, case["inputs"]["CEI"]]] == case["piece_token_ids"], name

        layout = text.lamic_text_layout(tokenize, sads, case["inputs"]["CEI"])
        expected = {row["group"]: tuple(row["span"]) for row in case["table"] if row["group"] in ("CEI", "EPrt")
                    or row["group"].startswith("SAD_")}
        assert {s.group: (s.start, s.end) for s in layout.spans} == expected, name
        assert expected["EPrt"][0] == case["valid_prompt_tokens_num"], name

        tokens = flux_tokenizer.tokenize_with_weights(joined, **text.prompt_tokenize_kwargs(case["prompt_tokens"]))
        t5 = torch.tensor([t for t, _ in tokens["t5xxl"][0]])
        assert torch.equal(t5, grouping[f"{name}.out.t5_ids"]), name
        assert int((t5 != 0).sum()) == case["t5_nonpad_tokens_of_joined_prompt"], name
        assert torch.equal(torch.tensor([t for t, _ in tokens["l"][0]]), grouping[f"{name}.out.clip_ids"]), name


def test_groups_and_memberships(lamic, grouping, flux_tokenizer):
    for name, case in lamic.cases["grouping"].items():
        _layout, sizes, token_groups = case_groups(lamic, grouping, flux_tokenizer, name)
        for got, want in zip(sizes, case["ref_sizes"]):
            assert list(got.floored) == want["floored16_hw"], name
            assert (list(got.to_area) if got.to_area else None) == want.get("to_area_hw"), name
            assert list(got.final) == want["final_hw"] and list(got.tokens) == want["tokens_hw"], name
        assert token_groups.names == case["groups"], name
        assert token_groups.membership.shape[1] == case["total_tokens"], name
        assert torch.equal(token_groups.membership, grouping[f"{name}.out.groups"]), name
        assert torch.equal(token_groups.membership_stage1, grouping[f"{name}.out.groups_stage1"]), name
        for row, group in zip(case["table"], token_groups.groups):
            if "tokens_stage1" in row:
                assert token_groups.membership_stage1[token_groups.groups.index(group)].nonzero().flatten().tolist() == \
                    row["tokens_stage1"], f"{name} {row['group']}"


def test_rule_tables_and_masks(lamic, grouping, flux_tokenizer):
    masks = lamic.tensors("masks")
    for name in lamic.cases["grouping"]:
        _layout, _sizes, token_groups = case_groups(lamic, grouping, flux_tokenizer, name)
        index_mask = masks[f"{name}.out.index_mask"]
        for stage in (1, 2):
            rules = groups_mod.rule_table(token_groups.groups, stage)
            assert torch.equal(rules, index_mask[..., stage - 1] > 0.5), f"{name} stage {stage}"
        expected = {"mask_stage1": groups_mod.stage_mask(token_groups, 1), "mask_stage2": groups_mod.stage_mask(token_groups, 2),
                    "mask_stage1_before_deoverlap": groups_mod.stage_mask(token_groups, 1, deoverlap=False)}
        for key, mask in expected.items():
            golden_key = f"{name}.out.{key}"
            if golden_key not in masks:
                assert key == "mask_stage1_before_deoverlap" and torch.equal(token_groups.membership_stage1, token_groups.membership)
                continue
            assert torch.equal(mask.dense(), masks[golden_key]), golden_key
            assert mask.allowed.any(1).all(), f"{golden_key}: a class attends to nothing"


def test_reference_pixels_and_tokens(lamic, grouping):
    import comfy.latent_formats

    refs = lamic.tensors("refs")
    latent_format = comfy.latent_formats.Flux()
    for name, case in lamic.cases["grouping"].items():
        tokens, plain = [], []
        for i, (ref, factor) in enumerate(zip(reference_inputs(case), case["enhance_factors"]), 1):
            image = grouping[f"{name}.in.ref{i}.image_u8"].float()[None] / 255.0
            pixels = references.resize_reference(image, ref.get("to_area")).movedim(-1, 1) * 2.0 - 1.0
            assert torch.equal(pixels, refs[f"{name}.r{i}.out.pixels"]), f"{name} ref {i} pixels"
            raw = refs[f"{name}.r{i}.out.vae_latent_raw"]
            normalised = latent_format.process_in(raw)
            assert_close(normalised, refs[f"{name}.r{i}.out.latent_norm"], f"{name} ref {i} latent")
            enhanced = references.enhance_latent(normalised, factor)
            assert_close(latent_format.process_in(references.enhance_latent(raw, factor, latent_format.shift_factor)),
                         enhanced, f"{name} ref {i} enhance on the raw latent")
            tokens.append(references.pack_tokens(enhanced))
            plain.append(references.pack_tokens(normalised))
        assert_close(torch.cat(tokens, 1), refs[f"{name}.out.ref_tokens"], f"{name} ref tokens")
        assert_close(torch.cat(plain, 1), refs[f"{name}.out.ref_tokens_no_enhance"], f"{name} ref tokens without enhance")
        assert refs[f"{name}.out.ref_tokens"].shape[1] == sum(h * w for h, w in (s["tokens_hw"] for s in case["ref_sizes"]))


def test_size_rules(lamic):
    rules = lamic.cases["size_rules"]
    for key, want in rules["resize_output_size"].items():
        height, width = map(int, key.split("x"))
        assert list(references.output_size(height, width)) == want, key
    for key, want in rules["resize_to_area"].items():
        size, area = key.split("@")
        height, width = map(int, size.split("x"))
        assert list(references.area_size(height, width, float(area))) == want, key


def test_stage_schedule(lamic):
    cases = lamic.cases
    for key, steps in cases["schedule"]["table"].items():
        ratio, total = key.split("x")
        assert schedule.first_stage_steps(float(ratio), int(total)) == steps, key
    loops = lamic.tensors("generate")
    for record, prefix in ((cases["generate"], "out"), (cases["generate"]["true_cfg"], "cfg.out")):
        sigmas = loops[f"{prefix}.sigmas"]
        assert sigmas.numel() - 1 == len(record["per_step"]) == record["steps"]
        assert schedule.first_stage_steps(record["first_stage_ratio"], record["steps"]) == record["first_stage_steps"]
        for step in record["per_step"]:
            stage = schedule.stage_of_sigma(sigmas[step["step"]], sigmas, record["first_stage_ratio"])
            assert f"stage{stage}" == step["stage"], f"{prefix} step {step['step']}"
            assert_close(sigmas[step["step"]], torch.tensor(step["sigma"]), tolerance=GOLDEN_TOLERANCE)
