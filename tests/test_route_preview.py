"""Router Mask Preview's sheet: a grid that stays readable in the node, and every subject's colour visible on any image."""

import pytest
import torch

from helpers import layout
from msp_package import pack

nodes = pack("nodes")
route_preview = pack("attention_patches.route_preview")
layer_map = pack("attention_patches.kinds.ms_diffusion.layer_map")

SIZE = (128, 192)  # image pixels (height, width)
BOXES = [(0.05, 0.1, 0.45, 0.9), (0.55, 0.1, 0.95, 0.9), (0.0, 0.0, 1.0, 1.0)]  # the last covers the whole image
PHRASES = ("dog", "cat", "lawn")


def preview(image=None, steps="final"):
    latent = {"samples": torch.zeros(1, 4, SIZE[0] // 8, SIZE[1] // 8)}
    return nodes.RouterMaskPreview.execute(routes=plan(), latent=latent, image=image, steps=steps).args[0][0]


def plan():
    return route_preview.RoutePlan(layout(BOXES, list(PHRASES), SIZE[1], SIZE[0]), PHRASES, layer_map.SDXL_DOWNSCALES)


def edge(subject: int) -> torch.Tensor:
    """Pixels of the first panel on the border of ``subject``'s route (the image edge counts as outside)."""
    routes = max(plan().static_routes(SIZE[0] // 8, SIZE[1] // 8).items(), key=lambda item: item[0][0])[1]
    covered = torch.nn.functional.interpolate(routes[None], size=SIZE, mode="nearest")[0, subject] > 0.5
    padded = torch.nn.functional.pad(covered, (1, 1, 1, 1))
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return covered & ~interior


@pytest.mark.parametrize("backdrop", [*route_preview.PALETTE[:3], (0, 0, 0), (255, 255, 255), (128, 128, 128)],
                         ids=lambda c: "rgb%d-%d-%d" % c)
def test_every_subject_stays_visible_on_a_plain_image_of_any_colour(backdrop):
    image = torch.tensor(backdrop, dtype=torch.float32).div(255).expand(1, *SIZE, 3).contiguous()
    sheet = preview(image)
    top = route_preview.CAPTION_HEIGHT
    panel = sheet[top:top + SIZE[0], :SIZE[1]] * 255
    for s in range(len(BOXES)):
        border = edge(s)
        contrast = (panel - torch.tensor(backdrop, dtype=torch.float32)).norm(dim=-1)
        nearby = torch.nn.functional.max_pool2d(contrast[None, None], 5, stride=1, padding=2)[0, 0]
        assert nearby[border].min() > 150, (PHRASES[s], backdrop)  # all along its border, its outline or halo stands out
        drawn = (panel[border] - torch.tensor(route_preview.colour(s), dtype=torch.float32)).norm(dim=-1)
        assert (drawn < 1).float().mean() > 0.2, PHRASES[s]  # in its own colour (where no other route shares the edge)


def test_panels_form_a_grid_one_row_per_source_one_column_per_resolution():
    sheet = preview()
    columns = len(layer_map.SDXL_DOWNSCALES)
    assert sheet.shape[1] == columns * SIZE[1]
    assert sheet.shape[0] < 2 * SIZE[0]  # only the boxes: one row, not a strip of one panel per column
    assert sheet.shape[1] / sheet.shape[0] < 2.5


def panel_of(routes: torch.Tensor, backdrop=None, size=SIZE) -> torch.Tensor:
    """The painted panel (uint8 RGB as int tensor) of [S, h, w] routes, over a plain image of colour ``backdrop``."""
    image = None if backdrop is None else torch.tensor(backdrop, dtype=torch.float32).div(255).expand(1, *size, 3).contiguous()
    sheet = route_preview.render([("", routes)], tuple(f"s{i}" for i in range(routes.shape[0])), size, image)
    top = route_preview.CAPTION_HEIGHT
    return (sheet[0, top:top + size[0], :size[1]] * 255).round().int()


def interior(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """``mask`` shrunk by ``margin`` pixels (away from outlines and halos; the image edge counts as outside)."""
    padded = torch.nn.functional.pad(mask.float(), (margin,) * 4)[None, None]
    return -torch.nn.functional.max_pool2d(-padded, 2 * margin + 1, stride=1)[0, 0] > 0.5


def test_cells_two_boxes_share_are_one_striped_region_in_both_colours_never_a_blend():
    """Three boxes in a row on a coarse grid share a column each: each shared column shows both sharers' colours, nothing else."""
    boxes = [(0.0, 0.0, 0.35, 1.0), (0.35, 0.0, 0.65, 1.0), (0.65, 0.0, 1.0, 1.0)]  # the "three in a row" preset
    routes = pack("attention_patches.routing").box_routes(torch.tensor(boxes), 4, 10).view(3, 4, 10)
    shared = (routes > 0.5).sum(0) > 1
    assert shared.any(0).nonzero().flatten().tolist() == [3, 6]  # a column of subjects 1+2, one of 2+3
    panel = panel_of(routes)
    up = torch.nn.functional.interpolate(routes[None], size=SIZE, mode="nearest")[0] > 0.5
    colours = torch.tensor(route_preview.PALETTE[:3], dtype=torch.int32)
    for pair in ((0, 1), (1, 2)):
        region = interior(up[pair[0]] & up[pair[1]], 2 * route_preview.OUTLINE_WIDTH + 1)
        assert region.sum() > 100
        pixels = panel[region]
        matches = [(pixels == colours[s]).all(-1) for s in pair]
        assert (matches[0] | matches[1]).all(), f"a blended colour where subjects {pair} share cells"
        assert min(m.float().mean() for m in matches) > 0.3, f"both colours of {pair} stripe their shared cells"
    alone = interior(up[0] & ~up[1], 2 * route_preview.OUTLINE_WIDTH + 1)
    assert (panel[alone] == colours[0]).all()  # where one subject is alone: its colour only


@pytest.mark.parametrize("subject", range(3))
def test_a_route_over_an_image_of_its_own_colour_still_stands_out(subject):
    backdrop = route_preview.PALETTE[subject]
    routes = torch.zeros(3, 4, 6)
    routes[subject, 1:3, 1:5] = 1
    panel = panel_of(routes, backdrop).float()
    inside = interior(torch.nn.functional.interpolate(routes[None], size=SIZE, mode="nearest")[0, subject] > 0.5, 6)
    distance = (panel[inside] - torch.tensor(backdrop, dtype=torch.float32)).norm(dim=-1)
    assert distance.min() >= 59, "the route's fill is lost on an image of its colour"


@pytest.mark.parametrize("backdrop", [None, (0, 0, 0), (255, 255, 255), (128, 128, 128), (60, 180, 75)], ids=str)
def test_cells_routed_nowhere_are_marked_not_left_as_the_image(backdrop):
    """An auto-routing step that routes some cells to no subject: those cells are hatched, on any image."""
    routes = torch.zeros(2, 4, 6)
    routes[0, :, :2] = 1
    routes[1, :, 4:] = 1  # columns 2 and 3: no route
    panel = panel_of(routes, backdrop).float()
    nowhere = torch.zeros(SIZE, dtype=torch.bool)
    nowhere[:, SIZE[1] // 3 + 6:2 * SIZE[1] // 3 - 6] = True
    under = torch.tensor(backdrop or route_preview.BACKGROUND, dtype=torch.float32)
    marked = (panel[nowhere] - under).norm(dim=-1) > 100
    assert marked.float().mean() > 0.1, "cells routed nowhere look like the image"
    rows_marked = ((panel - under).norm(dim=-1) > 100)[:, SIZE[1] // 3 + 6:2 * SIZE[1] // 3 - 6].any(1)
    assert rows_marked.all(), "every row of the unrouted cells carries the mark"


def test_captions_name_the_layers_in_artist_words(monkeypatch):
    assert route_preview.layer_words([(8, 8)]) == {(8, 8): "all layers"}
    assert route_preview.layer_words([(4, 6), (16, 24)]) == {(16, 24): "fine detail layers", (4, 6): "composition layers"}
    assert list(route_preview.layer_words([(4, 4), (8, 8), (16, 16)]).values()) == [
        "fine detail layers", "middle layers", "composition layers"]
    captions = []

    def keep_captions(panels, *args, **kwargs):
        captions.extend(caption for caption, _ in panels)
        return route_preview.render(panels, *args, **kwargs)

    monkeypatch.setattr(pack("nodes.router_mask_preview"), "render", keep_captions)
    preview()
    assert len(captions) == len(layer_map.SDXL_DOWNSCALES)
    assert captions[0] == "boxes, fine detail layers" and captions[-1] == "boxes, composition layers", captions
    assert not [c for c in captions if any(ch.isdigit() for ch in c)], captions  # no "boxes 16x16"
