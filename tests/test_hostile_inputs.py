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


def big_prompt(apply_nodes: int) -> dict:
    """``apply_nodes`` Apply nodes, each previewed, among as many other nodes with several inputs each."""
    prompt = {}
    for i in range(apply_nodes):
        prompt[f"a{i}"] = {"class_type": "MSP_ApplyMultiSubjectAttention", "inputs": {"model": ["m", 0], "scale": 0.6}}
        prompt[f"p{i}"] = {"class_type": "MSP_RouterMaskPreview", "inputs": {"routes": [f"a{i}", 1], "latent": ["s", 0]}}
    return prompt


def test_the_prompt_handler_is_linear_in_the_prompt_size():
    import time

    route_capture = pack("nodes.route_capture")

    def best_time(apply_nodes: int) -> float:
        best = float("inf")
        for _ in range(3):
            prompt = {"prompt": big_prompt(apply_nodes)}
            start = time.perf_counter()
            route_capture.mark_previewed_routes(prompt)
            best = min(best, time.perf_counter() - start)
        assert all(node["inputs"]["msp_routes_previewed"] for node in prompt["prompt"].values()
                   if node["class_type"] == "MSP_ApplyMultiSubjectAttention")
        return best

    small, large = best_time(1000), best_time(8000)  # 8x the nodes: linear ~8x, quadratic ~64x
    assert large < 24 * small, f"1000 Apply nodes: {small:.4f} s, 8000: {large:.4f} s"
