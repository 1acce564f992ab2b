"""Regions on the target's token grid: which image tokens each reference controls.

A region is a bool vector over the target tokens in row-major order. The official rule
(``LamicProcessor.preprocess_region``) works on the latent cell grid (1/8 of the pixels) and a
token of 2x2 cells belongs to a region iff the mean of its cells is > 0.5:

- a normalised box (all four coordinates in [0, 1]) maps to cells by ``int(x * cells_w)``
  (truncation); any other box is in pixels and is floor-divided by the cell size;
- only x2 and y2 are clamped to the grid (a negative coordinate is rejected here);
- a mask image is resized to the cell grid by PIL bilinear and its first channel is used;
- no box and no mask: the whole image.

``RegionGrid`` is generic: ``patch`` latent cells per token side and ``cell_px`` pixels per cell
(Kontext and Qwen-Image: 8 px cells, patch 2; FLUX.2: 16 px cells, patch 1, or the 8 px / patch 2
grid to select exactly the tokens Kontext would at the same pixel size). A grid whose cell count is
not a multiple of ``patch`` gets extra tokens at the bottom and right, as ComfyUI's
``pad_to_patch_size`` adds them; their mean is over their real cells only (the official code
cannot take such a size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class RegionGrid:
    """The target's latent cell grid and how cells group into tokens."""

    cells_h: int
    cells_w: int
    patch: int = 2
    cell_px: int = 8

    def __post_init__(self):
        if min(self.cells_h, self.cells_w, self.patch, self.cell_px) < 1:
            raise ValueError(f"a region grid needs positive sizes, got {self}")

    @classmethod
    def for_image(cls, height: int, width: int, *, cell_px: int = 8, patch: int = 2) -> "RegionGrid":
        """The grid of a ``height`` x ``width`` px target (cells = pixels // cell_px, as the official code)."""
        return cls(height // cell_px, width // cell_px, patch, cell_px)

    @property
    def tokens_h(self) -> int:
        return math.ceil(self.cells_h / self.patch)

    @property
    def tokens_w(self) -> int:
        return math.ceil(self.cells_w / self.patch)

    @property
    def tokens(self) -> int:
        return self.tokens_h * self.tokens_w


def cells_to_tokens(grid: RegionGrid, cells: torch.Tensor) -> torch.Tensor:
    """[cells_h, cells_w] cell weights -> bool [tokens]: the mean of a token's (real, unpadded) cells is > 0.5."""
    padding = (0, grid.tokens_w * grid.patch - grid.cells_w, 0, grid.tokens_h * grid.patch - grid.cells_h)
    total = F.avg_pool2d(F.pad(cells.float()[None, None], padding), grid.patch)
    real = F.avg_pool2d(F.pad(torch.ones(1, 1, grid.cells_h, grid.cells_w), padding), grid.patch)
    return (total / real > 0.5)[0, 0].flatten()


def whole_region(grid: RegionGrid) -> torch.Tensor:
    """A reference without box or mask controls the whole image."""
    return torch.ones(grid.tokens, dtype=torch.bool)


def box_cells(grid: RegionGrid, box: Sequence[float]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) on the cell grid: normalised iff all four are in [0, 1], else pixels // cell_px."""
    if len(box) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {len(box)} numbers")
    if any(not math.isfinite(v) or v < 0 for v in box):
        raise ValueError(f"box coordinates must be finite and >= 0, got {tuple(box)}")
    x1, y1, x2, y2 = box
    if all(v <= 1 for v in box):
        cells = int(x1 * grid.cells_w), int(y1 * grid.cells_h), int(x2 * grid.cells_w), int(y2 * grid.cells_h)
    else:
        cells = tuple(int(v // grid.cell_px) for v in box)
    return cells[0], cells[1], min(cells[2], grid.cells_w), min(cells[3], grid.cells_h)


def box_region(grid: RegionGrid, box: Sequence[float]) -> torch.Tensor:
    """The tokens of a normalised or pixel box (official rules, see the module docstring)."""
    x1, y1, x2, y2 = box_cells(grid, box)
    cells = torch.zeros(grid.cells_h, grid.cells_w)
    cells[y1:y2, x1:x2] = 1
    return cells_to_tokens(grid, cells)


def mask_image_region(grid: RegionGrid, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Official ``mask_path``: a uint8 [h, w] or [h, w, c] image, first channel, PIL bilinear to the cell grid."""
    pixels = np.asarray(mask, dtype=np.uint8)
    channel = pixels[..., 0] if pixels.ndim == 3 else pixels
    resized = Image.fromarray(np.ascontiguousarray(channel)).resize((grid.cells_w, grid.cells_h), Image.Resampling.BILINEAR)
    return cells_to_tokens(grid, torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0))


def mask_region(grid: RegionGrid, mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK ([h, w] or [1, h, w], 0..1, stretched over the target): area mean per cell, then the token rule."""
    plane = mask.reshape(mask.shape[-2:]) if mask.dim() == 3 and mask.shape[0] == 1 else mask
    if plane.dim() != 2:
        raise ValueError(f"a region mask is [h, w] or [1, h, w], got {list(mask.shape)}")
    cells = F.interpolate(plane.float()[None, None], size=(grid.cells_h, grid.cells_w), mode="area")[0, 0]
    return cells_to_tokens(grid, cells)


def uncontrolled_region(regions: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """UReg: the tokens in no region; None when one region alone covers every token (no UReg group)."""
    if any(bool(region.all()) for region in regions):
        return None
    return ~torch.stack(list(regions)).any(0)


def deoverlap(regions: Sequence[torch.Tensor], subtract: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Stage-1 regions: region i minus every original region j listed in ``subtract[i]`` (1-based, j != i).

    The subtracted regions are the original ones, whatever their own lists say; a region may become
    empty. ``subtract`` may be shorter than ``regions`` (no list: unchanged).
    """
    result = list(regions)
    for i, others in enumerate(subtract):
        for j in others:
            if not 1 <= j <= len(regions):
                raise ValueError(f"de-overlap of reference {i + 1} names reference {j}; there are {len(regions)}")
            if j != i + 1:
                result[i] = result[i] & ~regions[j - 1]
    return result
