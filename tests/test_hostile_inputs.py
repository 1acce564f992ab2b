"""Wrong or extreme inputs to the pack's nodes: a named error on the right node (or a documented result), never a raw one."""

import pytest
import torch

from msp_package import pack

layout_mod = pack("attention_patches.layout")
nodes = pack("nodes")


def checkerboard(size: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((x + y) % 2 == 0).float()[None]


def test_a_mask_with_more_regions_than_boxes_is_refused_naming_the_limit():
    with pytest.raises(layout_mod.LayoutError, match=f"2048 separate regions; at most {layout_mod.MAX_BOXES}"):
        nodes.DrawLayoutBox.execute(boxes="", width=512, height=512, preset="custom", mask=checkerboard(64))


def test_a_one_pixel_checkerboard_at_512_is_refused_without_a_full_size_array_per_region():
    with pytest.raises(layout_mod.LayoutError, match=f"at most {layout_mod.MAX_BOXES}"):
        layout_mod.boxes_from_mask(checkerboard(512))  # before: 131072 full-size arrays at once (34 GB)


def test_a_mask_batch_larger_than_the_box_limit_is_refused():
    with pytest.raises(layout_mod.LayoutError, match=f"{layout_mod.MAX_BOXES + 1} batch entries"):
        layout_mod.boxes_from_mask(torch.ones(layout_mod.MAX_BOXES + 1, 8, 8))


def test_mask_regions_keep_their_exact_extents():
    mask = torch.zeros(1, 40, 80)
    mask[0, 5:10, 60:70] = 1
    mask[0, 20:40, 0:8] = 1
    boxes = layout_mod.boxes_from_mask(mask)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [(0.0, 0.5, 0.1, 1.0), (0.75, 0.125, 0.875, 0.25)]


BOXES = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)]


@pytest.fixture(scope="module")
def subjects(tiny_vision, tiny_clip):
    from helpers import encode_subjects

    return encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])


@pytest.mark.parametrize("inputs, named", [
    ({"scale": float("inf")}, "scale"),
    ({"scale": float("nan")}, "scale"),
    ({"scale": 1e308}, "scale"),
    ({"subject_scales": "0.5, inf"}, "subject_scales (subject 2)"),
    ({"subject_scales": "nan, 0.5"}, "subject_scales (subject 1)"),
    ({"subject_scales": "1e308, 0.5"}, "subject_scales (subject 1)"),
    ({"start_percent": float("nan")}, "start_percent"),
    ({"end_percent": float("nan")}, "end_percent"),
    ({"feather": float("nan")}, "feather"),
])
def test_non_finite_or_huge_numbers_are_named_errors_on_apply(tiny_unet, tiny_encoder, subjects, inputs, named):
    from helpers import apply, layout

    with pytest.raises(ValueError) as error:
        apply(tiny_unet, tiny_encoder, subjects, layout(BOXES), **inputs)
    assert f"{named} must be a finite number" in str(error.value)


def test_auto_routing_prompt_longer_than_the_positive_conditioning_is_a_named_error(tiny_unet, tiny_encoder, subjects, tiny_clip):
    from helpers import apply, layout, sample

    long_prompt = "a very detailed photograph of a garden, " * 12 + "a dog and a cat"
    model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES), auto_routing=True, prompt=long_prompt, start_step=1)
    auto_routing = pack("attention_patches.auto_routing")
    with pytest.raises(auto_routing.PromptMismatchError, match="has only 77 tokens.*same text|exactly the positive"):
        sample(model, tiny_clip, (16, 24), steps=1, prompt="a dog and a cat")


references = pack("attention_patches.references")


@pytest.mark.parametrize("image, message", [
    (torch.full((1, 32, 32, 3), float("nan")), "NaN or infinite pixels"),
    (torch.full((1, 32, 32, 3), float("inf")), "NaN or infinite pixels"),
    (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "uint8 values"),
    (torch.zeros(1, 32, 32, 3, dtype=torch.int64), "int64 values"),
    (torch.zeros(0, 32, 32, 3), "is empty"),
    (torch.zeros(1, 0, 32, 3), "is empty"),
    (torch.zeros(references.MAX_REFERENCE_VIEWS + 1, 8, 8, 3), f"at most {references.MAX_REFERENCE_VIEWS} views"),
])
def test_unusable_reference_images_are_named_on_encode_reference(tiny_vision, tiny_clip, image, message):
    with pytest.raises(references.ReferenceError, match=message):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog")


def test_a_non_finite_mask_weight_is_named_on_encode_reference(tiny_vision, tiny_clip):
    with pytest.raises(ValueError, match="mask_weight must be a finite number"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=torch.rand(1, 32, 32, 3), phrase="dog",
                                      mask_weight=float("nan"))


def test_an_fp16_reference_encodes_like_fp32(tiny_vision, tiny_clip, tiny_encoder):
    from helpers import reference_image

    image = reference_image(3)
    half = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image.half(), phrase="dog",
                                         subject_encoder=tiny_encoder).args[0][0]
    full = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image.half().float(), phrase="dog",
                                         subject_encoder=tiny_encoder).args[0][0]
    assert half.reference.pixels.dtype == torch.float32
    assert torch.equal(half.reference.pixels, full.reference.pixels)


def test_an_all_black_reference_mask_is_refused(tiny_vision, tiny_clip):
    with pytest.raises(references.ReferenceError, match="all black"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=torch.rand(1, 32, 32, 3), phrase="dog",
                                      mask=torch.zeros(1, 32, 32))
    transparent = torch.cat([torch.rand(1, 32, 32, 3), torch.zeros(1, 32, 32, 1)], dim=-1)
    with pytest.raises(references.ReferenceError, match="alpha channel is all black"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=transparent, phrase="dog")


def test_a_huge_reference_is_downscaled_view_by_view_before_stacking():
    image = torch.rand(1, 4096, 2048, 3).expand(3, -1, -1, -1)  # three 4096x2048 views sharing one buffer
    mask = torch.ones(1, 4096, 2048)
    rgb, used = references.split_reference(image, mask)
    side = references.MAX_REFERENCE_SIDE
    assert rgb.shape == (3, side, side // 2, 3) and used.shape == (3, side, side // 2)
    assert rgb.dtype == torch.float32 and 0.45 < float(rgb.mean()) < 0.55


def draw_layout_errors(server, **inputs) -> list:
    from comfy_server import PromptRefused
    from graphs import two_subject_graph

    graph = two_subject_graph(preview=False)
    layout_id = next(i for i, n in graph.nodes.items() if n["class_type"] == "MSP_DrawLayoutBox")
    graph.nodes[layout_id]["inputs"].update(inputs)
    with pytest.raises(PromptRefused) as refused:
        server.run(graph.prompt(), timeout=120)
    assert refused.value.status == 400
    return refused.value.body["node_errors"][layout_id]["errors"]


def test_a_layout_error_is_shown_once_on_the_boxes_input(comfy_server):
    errors = draw_layout_errors(comfy_server, boxes="[[0, 0, 0, 0], [0.5, 0, 1, 1]]")
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == "boxes" and "all zeros" in errors[0]["details"]


def test_an_empty_boxes_string_is_refused_at_queue_time(comfy_server):
    errors = draw_layout_errors(comfy_server, boxes="   ")
    assert len(errors) == 1 and "no boxes" in errors[0]["details"], errors


def test_boxes_a_preset_overrides_are_still_checked_once_and_never_rewritten(comfy_server):
    """Draw Layout Box never rewrites the prompt; a preset is not read at queue time (it would repeat the message)."""
    errors = draw_layout_errors(comfy_server, boxes="not json at all", preset="side by side")
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "boxes", errors
