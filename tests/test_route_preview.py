"""Router Mask Preview's sheet: a grid that stays readable in the node, and every subject's colour visible on any image."""

import pytest
import torch

from devkit.helpers import layout
from devkit.pack import pack

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
