"""What Router Mask Preview shows, for any kind: the static routes of the layout and the routes the model used.

``RoutePlan`` is the ROUTES socket's payload. Rendering draws every subject in its own colour
(the canvas widget's palette), outlined so it shows on any image, with a legend of phrases: a
grid with one row per source (the boxes, each chosen step) and one column per attention resolution,
named in words ("fine detail layers", ...). Cells several subjects share are one striped region in
their colours (no blended colour that reads as another subject); cells routed to no subject are
hatched, never left looking like the image.
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
from ..models.safe_text import printable

LATENT_SCALE = 8  # image pixels per latent pixel (the VAEs of every base model the kinds patch)
# the canvas widget (web/layout_box_canvas.js) draws boxes in the same colours
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (220, 190, 255), (170, 110, 40))
OVERLAY_OPACITY = 0.6
MAX_PANEL_SIDE = 512
CAPTION_HEIGHT = 22
LEGEND_ROW_HEIGHT = 22
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
NOTE = (255, 200, 90)
HALO = (0, 0, 0)
OUTLINE_WIDTH = 2  # pixels of each route's outline (and of the dark halo around it)
STRIPE = 6  # pixels of each colour's stripe where subjects share cells
MIN_FILL_CONTRAST = 60.0  # RGB distance a route's fill keeps from the image under it (a green route on green grass)
NO_ROUTE_SPACING = 10  # pixels between the hatch lines of cells routed nowhere
NO_ROUTE_DARK, NO_ROUTE_LIGHT = (0, 0, 0), (230, 230, 230)  # a double stroke: visible on dark and light images
MIN_SHEET_WIDTH = 640  # room for a note line under narrow panels


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


LAYER_WORDS = {1: ("all layers",), 2: ("fine detail layers", "composition layers"),
               3: ("fine detail layers", "middle layers", "composition layers")}


def layer_words(sizes: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Artist words for the attention resolutions (h, w) of a preview, finest first."""
    ordered = sorted(set(sizes), key=lambda hw: -hw[0] * hw[1])
    words = LAYER_WORDS.get(len(ordered))
    if words is None:
        words = ("fine detail layers", *(f"middle layers {i}" for i in range(1, len(ordered) - 1)), "composition layers")
    return dict(zip(ordered, words))


def outlines(routes: torch.Tensor, width: int = OUTLINE_WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    """([S, H, W] inner edge, [S, H, W] halo just around it) of each route (covered where > 0.5)."""
    covered = (routes > 0.5).float()[:, None]
    inner = covered
    for _ in range(width):
        inner = -F.max_pool2d(-F.pad(inner, (1, 1, 1, 1)), 3, stride=1)  # erode by one pixel; the image edge counts as outside
    edge = covered - inner
    halo = F.max_pool2d(edge, 2 * width + 1, stride=1, padding=width) * (1 - edge)
    return edge[:, 0] > 0, halo[:, 0] > 0


def fill_colours(weights: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """[H, W, 3] fill: a subject's colour where it is alone, diagonal stripes of each sharer's colour where several share."""
    height, width = weights.shape[1:]
    member = weights > 0
    count = member.sum(axis=0)
    stripe = (np.add.outer(np.arange(height), np.arange(width)) // STRIPE) % np.maximum(count, 1)
    rank = np.cumsum(member, axis=0) - 1  # each member's place among the pixel's subjects
    chosen = (member & (rank == stripe[None])).argmax(axis=0)
    return colours[chosen] if len(colours) else np.zeros((height, width, 3), np.float32)


def keep_contrast(out: np.ndarray, base: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Pull a fill that nearly matches the image under it (a green route on green grass) half way to black or white."""
    close = where & (np.linalg.norm(out - base, axis=-1) < MIN_FILL_CONTRAST)
    bright = base @ np.array([0.299, 0.587, 0.114], np.float32) > 110
    out[close & bright] *= 0.5
    out[close & ~bright] = out[close & ~bright] * 0.5 + 127.5
    return out


def mark_no_route(out: np.ndarray, routed: np.ndarray) -> None:
    """Hatch the pixels routed to no subject with a dark and a light line, so they never look like the image."""
    height, width = routed.shape
    diagonal = np.subtract.outer(np.arange(height), np.arange(width)) % NO_ROUTE_SPACING
    out[~routed & (diagonal == 0)] = NO_ROUTE_DARK
    out[~routed & (diagonal == 1)] = NO_ROUTE_LIGHT


def paint(routes: torch.Tensor, size: tuple[int, int], backdrop: np.ndarray | None) -> np.ndarray:
    """[S, h, w] routes -> [H, W, 3] uint8, each subject in its colour, over ``backdrop`` if given.

    Every route gets an outline in its colour inside a dark halo, so each colour stays visible on any
    image (a green route on a green photo shows its dark halo, on a black one its colour); its fill
    keeps a contrast to the image under it. Shared cells are striped, unrouted cells hatched.
    """
    height, width = size
    up = F.interpolate(routes[None].float(), size=(height, width), mode="nearest")[0].clamp(0, 1)
    colours = np.array([colour(i) for i in range(up.shape[0])], dtype=np.float32).reshape(-1, 3)
    weights = up.numpy()
    coverage = weights.max(axis=0, initial=0.0)[..., None]
    base = np.full((height, width, 3), BACKGROUND, np.float32) if backdrop is None else backdrop.astype(np.float32)
    opacity = OVERLAY_OPACITY if backdrop is not None else 1.0
    out = base * (1 - opacity * coverage) + fill_colours(weights, colours) * opacity * coverage
    out = keep_contrast(out, base, coverage[..., 0] > 0)
    mark_no_route(out, coverage[..., 0] > 0)
    if up.shape[0]:
        edges, halos = (m.numpy() for m in outlines(up))
        out[halos.any(axis=0)] = HALO
        for s in range(up.shape[0]):
            out[edges[s]] = colours[s]
    return out.clip(0, 255).astype(np.uint8)


def no_route_swatch() -> np.ndarray:
    """The legend's swatch of the hatch that marks cells routed to no subject."""
    swatch = np.full((16, 16, 3), BACKGROUND, np.float32)
    mark_no_route(swatch, np.zeros((16, 16), bool))
    return swatch.astype(np.uint8)


def render(panels: list[tuple[str, torch.Tensor]], phrases: tuple[str, ...], size: tuple[int, int],
           overlay: torch.Tensor | None = None, columns: int = 0, notes: list[str] = ()) -> torch.Tensor:
    """A [1, H, W, 3] sheet: captioned panels in a grid of ``columns`` (0: one row), the legend and notes below."""
    height, width = size
    scale = min(1.0, MAX_PANEL_SIDE / max(height, width))
    panel_h, panel_w = max(1, round(height * scale)), max(1, round(width * scale))
    backdrop = None
    if overlay is not None:
        picture = overlay[0, ..., :3].movedim(-1, 0)[None].float()
        backdrop = (F.interpolate(picture, size=(panel_h, panel_w), mode="bilinear", align_corners=False)[0]
                    .movedim(0, -1).clamp(0, 1).numpy() * 255)
    columns = min(columns or len(panels), len(panels)) or 1
    rows = -(-len(panels) // columns)
    cell_h = CAPTION_HEIGHT + panel_h
    legend_h = LEGEND_ROW_HEIGHT * (len(phrases) + 1) + 6
    notes_h = LEGEND_ROW_HEIGHT * len(notes)
    sheet_w = max(panel_w * columns, MIN_SHEET_WIDTH if notes else 0)
    sheet = Image.new("RGB", (sheet_w, cell_h * rows + legend_h + notes_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for i, (caption, routes) in enumerate(panels):
        left, top = (i % columns) * panel_w, (i // columns) * cell_h
        sheet.paste(Image.fromarray(paint(routes, (panel_h, panel_w), backdrop)), (left, top + CAPTION_HEIGHT))
        draw.text((left + 4, top + 3), caption, fill=TEXT, font=font)
    for s, phrase in enumerate(phrases):
        top = cell_h * rows + 4 + s * LEGEND_ROW_HEIGHT
        draw.rectangle((5, top + 2, 21, top + 18), fill=HALO, outline=TEXT)
        draw.rectangle((7, top + 4, 19, top + 16), fill=colour(s))
        draw.text((28, top + 2), f"{s + 1}  {printable(phrase, 60)}", fill=TEXT, font=font)
    key = cell_h * rows + 4 + len(phrases) * LEGEND_ROW_HEIGHT
    sheet.paste(Image.fromarray(no_route_swatch()), (5, key + 2))
    draw.text((28, key + 2), "hatched: no route   striped: shared cells", fill=TEXT, font=font)
    for n, note in enumerate(notes):
        draw.text((6, cell_h * rows + legend_h + n * LEGEND_ROW_HEIGHT + 2), note, fill=NOTE, font=font)
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)[None]
