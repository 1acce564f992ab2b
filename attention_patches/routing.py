"""Box -> token routes at a layer's own (h, w), and grouping of pixels by covering subjects.

A route is a ``[S, h*w]`` weight per subject and pixel (row-major, origin top-left): 1 inside
the subject's box, 0 outside, optionally a linear ramp outside the box (feather). Pixels are
grouped by the set of subjects that cover them, so each group attends only to its own
subjects' tokens: exact, and the cost no longer grows with the number of subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SUBJECTS = 62  # subject sets are encoded as bits of an int64


def box_routes(boxes: torch.Tensor, height: int, width: int, feather: float = 0.0) -> torch.Tensor:
    """[S, height*width] routes of normalised x1,y1,x2,y2 boxes.

    Columns ``[floor(x1*w), ceil(x2*w))`` and rows ``[floor(y1*h), ceil(y2*h))`` are inside.
    ``feather`` (in tokens of this layer) adds a linear falloff outside the box.
    """
    boxes = boxes.to(torch.float32)
    x0 = torch.floor(boxes[:, 0] * width)
    y0 = torch.floor(boxes[:, 1] * height)
    x1 = torch.ceil(boxes[:, 2] * width)
    y1 = torch.ceil(boxes[:, 3] * height)
    cols = torch.arange(width, dtype=torch.float32, device=boxes.device)
    rows = torch.arange(height, dtype=torch.float32, device=boxes.device)
    # distance in cells from each column/row to the box's cell range (0 inside)
    dx = torch.clamp(torch.maximum(x0[:, None] - cols, cols - (x1[:, None] - 1)), min=0)
    dy = torch.clamp(torch.maximum(y0[:, None] - rows, rows - (y1[:, None] - 1)), min=0)
    if feather > 0:
        distance = torch.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
        routes = torch.clamp(1 - distance / feather, min=0)
    else:
        routes = ((dy[:, :, None] == 0) & (dx[:, None, :] == 0)).to(torch.float32)
    return routes.reshape(boxes.shape[0], height * width)


@dataclass(frozen=True)
class RouteGroup:
    """Pixels that share one set of covering subjects.

    ``pixels`` is None when the group is every pixel. ``weights`` ([n_pixels, n_subjects])
    is set only where some route is fractional (feathered edges); otherwise all are 1.
    """

    subjects: tuple[int, ...]
    pixels: torch.Tensor | None
    weights: torch.Tensor | None = None


def route_groups(routes: torch.Tensor) -> list[RouteGroup]:
    """Group the pixels of ``routes`` [S, N] by covering set; uncovered pixels are dropped."""
    num_subjects, num_pixels = routes.shape
    if num_subjects > MAX_SUBJECTS:
        raise ValueError(f"at most {MAX_SUBJECTS} subjects can be routed in one layer, got {num_subjects}")
    covered = routes > 0
    bits = torch.arange(num_subjects, device=routes.device, dtype=torch.int64)
    codes = (covered.to(torch.int64) << bits[:, None]).sum(0)
    soft = (covered & (routes < 1)).any(0)
    keys = codes * 2 + soft.to(torch.int64)
    groups = []
    for key in torch.unique(keys).tolist():
        code, is_soft = key >> 1, key & 1
        if code == 0:
            continue
        subjects = tuple(s for s in range(num_subjects) if code >> s & 1)
        pixels = torch.nonzero(keys == key).squeeze(1)
        weights = routes[list(subjects)][:, pixels].T.contiguous() if is_soft else None
        if pixels.numel() == num_pixels:
            pixels = None
        groups.append(RouteGroup(subjects, pixels, weights))
    return groups
