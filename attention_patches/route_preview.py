"""What Router Mask Preview shows: the static routes of the layout and the routes the model used.

``RoutePlan`` is the ROUTES socket's payload. Rendering draws every subject in its own colour
(the canvas widget's palette) with a legend of phrases, one panel per attention resolution
and chosen step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .layer_map import latent_grid
from .layout import Layout
from .recorder import RouteRecorder
from .routing import box_routes
from .safe_text import printable

LATENT_SCALE = 8  # image pixels per latent pixel (SDXL VAE)
# the canvas widget (web/layout_box_canvas.js) draws boxes in the same colours
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (220, 190, 255), (170, 110, 40))
OVERLAY_OPACITY = 0.6
MAX_PANEL_SIDE = 512
CAPTION_HEIGHT = 22
LEGEND_ROW_HEIGHT = 22
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclass(frozen=True, eq=False)
class RoutePlan:
    layout: Layout
    phrases: tuple[str, ...]
    downscales: tuple[int, ...]  # latent pixels per token of each attention resolution
    feather: float = 0.0  # latent pixels
    recorder: RouteRecorder | None = None

    def static_routes(self, latent_height: int, latent_width: int) -> dict[tuple[int, int], torch.Tensor]:
        """[S, h, w] box routes at every attention resolution of this latent size."""
        out = {}
        boxes = self.layout.tensor()
        for downscale in self.downscales:
            h, w = latent_grid(latent_height, downscale), latent_grid(latent_width, downscale)
            out[(h, w)] = box_routes(boxes, h, w, self.feather / downscale).view(-1, h, w)
        return out

    def image_masks(self, height: int, width: int, step: int | None = None, layers: list[str] | None = None) -> torch.Tensor:
        """[S, height, width] routes at image size: the boxes, or the finest recorded route at ``step`` (of ``layers``)."""
        recorded = self.recorder.routes_at(step, layers) if self.recorder is not None and step is not None else {}
        if recorded:
            finest = recorded[max(recorded, key=lambda hw: hw[0] * hw[1])]
            return F.interpolate(finest[None], size=(height, width), mode="nearest")[0]
        return box_routes(self.layout.tensor(), height, width, self.feather * LATENT_SCALE).view(-1, height, width)


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def paint(routes: torch.Tensor, size: tuple[int, int], backdrop: np.ndarray | None) -> np.ndarray:
    """[S, h, w] routes -> [H, W, 3] uint8, each subject in its colour, over ``backdrop`` if given."""
    height, width = size
    up = F.interpolate(routes[None].float(), size=(height, width), mode="nearest")[0].clamp(0, 1).numpy()
    colours = np.array([colour(i) for i in range(up.shape[0])], dtype=np.float32)
    coverage = up.max(axis=0, initial=0.0)[..., None]
    tint = np.einsum("shw,sc->hwc", up, colours) / np.maximum(up.sum(axis=0), 1e-6)[..., None]
    base = np.full((height, width, 3), BACKGROUND, np.float32) if backdrop is None else backdrop.astype(np.float32)
    opacity = OVERLAY_OPACITY if backdrop is not None else 1.0
    return (base * (1 - opacity * coverage) + tint * opacity * coverage).clip(0, 255).astype(np.uint8)


def render(panels: list[tuple[str, torch.Tensor]], phrases: tuple[str, ...], size: tuple[int, int],
           overlay: torch.Tensor | None = None) -> torch.Tensor:
    """A [1, H, W, 3] sheet: captioned panels side by side, a legend of phrases below."""
    height, width = size
    scale = min(1.0, MAX_PANEL_SIDE / max(height, width))
    panel_h, panel_w = max(1, round(height * scale)), max(1, round(width * scale))
    backdrop = None
    if overlay is not None:
        picture = overlay[0, ..., :3].movedim(-1, 0)[None].float()
        backdrop = (F.interpolate(picture, size=(panel_h, panel_w), mode="bilinear", align_corners=False)[0]
                    .movedim(0, -1).clamp(0, 1).numpy() * 255)
    legend_h = LEGEND_ROW_HEIGHT * max(1, len(phrases)) + 6
    sheet = Image.new("RGB", (panel_w * len(panels), CAPTION_HEIGHT + panel_h + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for i, (caption, routes) in enumerate(panels):
        sheet.paste(Image.fromarray(paint(routes, (panel_h, panel_w), backdrop)), (i * panel_w, CAPTION_HEIGHT))
        draw.text((i * panel_w + 4, 3), caption, fill=TEXT, font=font)
    for s, phrase in enumerate(phrases):
        top = CAPTION_HEIGHT + panel_h + 4 + s * LEGEND_ROW_HEIGHT
        draw.rectangle((6, top + 3, 20, top + 17), fill=colour(s))
        draw.text((28, top + 2), f"{s + 1}  {printable(phrase, 60)}", fill=TEXT, font=font)
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)[None]
