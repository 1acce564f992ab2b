"""The layout: one normalised box per subject, parsed from the Draw Layout Box STRING.

The STRING is the single source of truth shared by the canvas widget, saved workflows and
API prompts. Canonical form (what the canvas writes)::

    [{"x1": 0.0, "y1": 0.25, "x2": 0.5, "y2": 0.75, "label": "dog"}, ...]

Coordinates are fractions of the image, origin top-left; list order is subject order.
Plain ``[[x1, y1, x2, y2], ...]`` and ``{"boxes": [...]}`` are accepted too. Every problem
raises :class:`LayoutError` with a message that names the box and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from ..models.safe_text import quoted

MAX_BOXES = 32
REGION_SIDE = 256  # a MASK region is kept at most this many pixels per side (finer than any latent cell grid up to 2048 px)
MAX_LABEL_LENGTH = 200
COORDINATES = ("x1", "y1", "x2", "y2")
CUSTOM_PRESET = "custom"
CANONICAL_EXAMPLE = '[{"x1": 0.0, "y1": 0.25, "x2": 0.5, "y2": 0.75, "label": "dog"}]'

# MS-Diffusion's defaults and MS-Bench layouts.
PRESETS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "one subject": ((0.25, 0.25, 0.75, 0.75),),
    "two subjects": ((0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)),
    "side by side": ((0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)),
    "three in a row": ((0.0, 0.25, 0.35, 0.75), (0.35, 0.25, 0.65, 0.75), (0.65, 0.25, 1.0, 0.75)),
    "subject + scene": ((0.25, 0.25, 0.75, 0.75), (0.0, 0.0, 1.0, 1.0)),
    "subject + hat": ((0.25, 0.25, 0.75, 0.75), (0.25, 0.0, 0.75, 0.25)),
    "top / middle / bottom wear": ((0.25, 0.0, 0.75, 0.25), (0.25, 0.25, 0.75, 0.6), (0.25, 0.6, 0.75, 1.0)),
}


class LayoutError(ValueError):
    """The layout STRING cannot be used; the message names the box and the fix."""


@dataclass(frozen=True)
class LayoutBox:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""

    def as_dict(self) -> dict:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2, "label": self.label}


@dataclass(frozen=True)
class Layout:
    boxes: tuple[LayoutBox, ...]
    width: int
    height: int
    # box i's painted region [H, W] (0..1) when the boxes came from a MASK, for kinds that use the shape (LAMIC)
    regions: tuple[torch.Tensor, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def whole_image(cls, count: int, width: int = 1024, height: int = 1024) -> Layout:
        """Every subject over the whole image: what a kind acting without a layout routes."""
        return cls(tuple(LayoutBox(0.0, 0.0, 1.0, 1.0) for _ in range(count)), width, height)

    def tensor(self) -> torch.Tensor:
        """[S, 4] float32 boxes."""
        return torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in self.boxes], dtype=torch.float32)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(b.label for b in self.boxes)

    def to_json(self) -> str:
        return boxes_to_json(self.boxes)


def boxes_to_json(boxes) -> str:
    return json.dumps([b.as_dict() for b in boxes])


def preset_boxes(name: str) -> tuple[LayoutBox, ...]:
    if name not in PRESETS:
        raise LayoutError(f"unknown layout preset {quoted(name)}; choose one of: {', '.join(PRESETS)}")
    return tuple(LayoutBox(*coords) for coords in PRESETS[name])


def parse_boxes(text: str) -> tuple[LayoutBox, ...]:
    """Boxes from the STRING, validated."""
    if not isinstance(text, str) or not text.strip():
        raise LayoutError(f"no boxes: draw one box per subject on the canvas, or type JSON like {CANONICAL_EXAMPLE}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        detail = f" ({e.msg} at line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise LayoutError(f"the boxes are not valid JSON{detail}; expected e.g. {CANONICAL_EXAMPLE}") from None
    if isinstance(data, dict) and "boxes" in data:
        data = data["boxes"]
    if not isinstance(data, list):
        raise LayoutError(f"the boxes must be a JSON list of boxes, e.g. {CANONICAL_EXAMPLE}")
    if not data:
        raise LayoutError("the layout has no boxes: draw one box per subject")
    if len(data) > MAX_BOXES:
        raise LayoutError(f"the layout has {len(data)} boxes; at most {MAX_BOXES} are supported")
    return tuple(_parse_box(i + 1, item) for i, item in enumerate(data))


def _parse_box(number: int, item: object) -> LayoutBox:
    label = ""
    if isinstance(item, dict):
        missing = [c for c in COORDINATES if c not in item]
        if missing:
            raise LayoutError(f"box {number} lacks {', '.join(missing)}: each box needs x1, y1, x2, y2 (and optionally a label)")
        values = [item[c] for c in COORDINATES]
        label = item.get("label", "")
        if label is None:
            label = ""
        if not isinstance(label, str):
            raise LayoutError(f"box {number}: the label must be text (the subject's phrase), got {type(label).__name__}")
        label = label.strip()[:MAX_LABEL_LENGTH]
    elif isinstance(item, (list, tuple)) and len(item) == 4:
        values = list(item)
    else:
        raise LayoutError(f"box {number}: expected {{\"x1\", \"y1\", \"x2\", \"y2\", \"label\"}} or [x1, y1, x2, y2], got {_short(item)}")
    name = f"box {number}" + (f" ({quoted(label, 40)})" if label else "")
    coords = [_coordinate(name, coord, value) for coord, value in zip(COORDINATES, values)]
    x1, y1, x2, y2 = coords
    if not any(coords):
        raise LayoutError(f"{name} is all zeros, which would silently disable its subject: draw the box where the subject goes")
    outside = [f"{c} = {v:g}" for c, v in zip(COORDINATES, coords) if not 0.0 <= v <= 1.0]
    if outside:
        hint = " (these look like pixels: divide by the image width/height)" if max(coords) > 1.0 else ""
        raise LayoutError(
            f"{name}: {', '.join(outside)} is outside 0..1; coordinates are fractions of the image with the origin "
            f"at the top-left{hint}"
        )
    for low, high, axis in ((x1, x2, "x"), (y1, y2, "y")):
        if low == high:
            raise LayoutError(f"{name} is empty: {axis}1 == {axis}2 = {low:g}; give it a width and a height")
        if low > high:
            raise LayoutError(f"{name}: {axis}1 ({low:g}) > {axis}2 ({high:g}); give the top-left corner first")
    return LayoutBox(x1, y1, x2, y2, label)


def _coordinate(name: str, coord: str, value: object) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            pass
    if number is None or not math.isfinite(number):
        raise LayoutError(f"{name}: {coord} must be a finite number, got {_short(value)}")
    return number


def _short(value: object) -> str:
    try:
        return quoted(json.dumps(value), 60)
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def parse_single_box(text: str, name: str = "box") -> tuple[float, float, float, float]:
    """One box from "x1, y1, x2, y2" (fractions) or its JSON forms."""
    stripped = text.strip()
    if not stripped.startswith(("[", "{")):
        stripped = f"[{stripped}]"
    try:
        item = json.loads(stripped)
    except json.JSONDecodeError:
        raise LayoutError(f"{name}: expected four fractions 'x1, y1, x2, y2', got {quoted(text, 60)}") from None
    box = _parse_box(1, item)
    return box.x1, box.y1, box.x2, box.y2


def boxes_from_mask(mask: torch.Tensor) -> tuple[LayoutBox, ...]:
    """One box per batch entry of ``mask`` [B, H, W], or per connected region when B == 1 (see :func:`mask_regions`)."""
    return tuple(box for box, _region in mask_regions(mask))


def mask_regions(mask: torch.Tensor) -> tuple[tuple[LayoutBox, torch.Tensor], ...]:
    """(bounding box, region [H, W] float 0..1) per batch entry of ``mask`` [B, H, W], or per connected region when B == 1.

    Regions are ordered left to right (then top to bottom), batch entries keep their order.
    At most ``MAX_BOXES`` of either; the regions' extents come from one labelling pass, so the
    work and memory do not grow with the number of regions.
    """
    from scipy import ndimage

    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise LayoutError(f"the layout MASK must be [batch, height, width], got shape {list(mask.shape)}")
    entries, height, width = mask.shape
    if entries > MAX_BOXES:
        raise LayoutError(f"the layout MASK has {entries} batch entries; at most {MAX_BOXES} subjects (one per entry) are supported")
    if entries > 1:
        found = [(_extent(ndimage.find_objects((entry > 0.5).cpu().numpy().astype("uint8"))), _kept(entry)) for entry in mask]
        found = [(extent, region) for extent, region in found if extent is not None]
    else:
        labels, count = ndimage.label((mask[0] > 0.5).cpu().numpy())
        if count > MAX_BOXES:
            raise LayoutError(
                f"the layout MASK has {count} separate regions; at most {MAX_BOXES} are supported (one per subject): "
                "paint one solid region per subject, or give one batch entry per subject"
            )
        labelled = torch.from_numpy(labels)
        found = [(_extent([extent]), _kept(mask[0].cpu() * (labelled == number + 1)))
                 for number, extent in enumerate(ndimage.find_objects(labels))]
    regions = [(LayoutBox(xs.start / width, ys.start / height, xs.stop / width, ys.stop / height), region)
               for (ys, xs), region in found]
    if not regions:
        raise LayoutError("the layout MASK is empty: paint one region per subject, or disconnect it to use the drawn boxes")
    if entries == 1:
        regions.sort(key=lambda r: (r[0].x1, r[0].y1))
    return tuple(regions)


def _kept(region: torch.Tensor) -> torch.Tensor:
    """A region as the layout keeps it: float, area-reduced to at most REGION_SIDE per side (bounded memory)."""
    region = region.float().cpu()
    scale = REGION_SIDE / max(region.shape)
    if scale >= 1:
        return region
    size = (max(1, round(region.shape[0] * scale)), max(1, round(region.shape[1] * scale)))
    return torch.nn.functional.interpolate(region[None, None], size=size, mode="area")[0, 0]


def _extent(found: list) -> tuple[slice, slice] | None:
    """The (rows, columns) slices of scipy's find_objects for one label, None when it found nothing."""
    return found[0] if found and found[0] is not None else None


def make_layout(text: str, width: int, height: int, preset: str = CUSTOM_PRESET) -> Layout:
    """The layout of a Draw Layout Box node: the preset's boxes, or the STRING's."""
    boxes = parse_boxes(text) if preset == CUSTOM_PRESET else preset_boxes(preset)
    return Layout(boxes, int(width), int(height))
