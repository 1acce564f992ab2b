"""Box -> token routes at a layer's own (h, w), and the attention masks they imply.

A route is a ``[S, h*w]`` weight per subject and pixel (row-major, origin top-left): 1 inside
the subject's box, 0 outside, optionally a linear ramp outside the box (feather). Each pixel
attends only to the tokens of the subjects that cover it; :class:`RouteMask` turns the routes
into the mask of one fused attention over all subjects' tokens, built once per route (box
routes: once per grid), so later calls pay nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
class TokenMask:
    """What one fused attention over every subject's tokens needs to route every pixel at once.

    - ``bias``: [N, S*T] additive mask, 0 on the tokens of the pixel's subjects, -inf
      elsewhere; None when every pixel attends to every subject's tokens. A pixel covered by
      no subject attends to every token (a row of -inf only would make its softmax NaN).
    - ``coverage``: [N, 1] 1 on covered pixels, 0 elsewhere, multiplied into the output so
      such pixels receive exactly zero; None when every pixel is covered. (Cheaper than a
      zero-valued extra token: an odd token count slows the attention kernel more than one
      multiply costs.)
    - ``weights``: [N, S*T] float32 probability weights (feathered routes; they are 0 on
      uncovered pixels already), else None.
    """

    bias: torch.Tensor | None
    weights: torch.Tensor | None
    coverage: torch.Tensor | None


class RouteMask:
    """The routes ``[S, N]`` of one layer call and their token masks, built once per token layout."""

    def __init__(self, routes: torch.Tensor):
        self.routes = routes
        self._masks: dict = {}

    @property
    def num_subjects(self) -> int:
        return self.routes.shape[0]

    def covering_sets(self) -> set[tuple[int, ...]]:
        """The distinct non-empty sets of subjects covering a pixel (the pixel groups)."""
        covered = (self.routes > 0).T.tolist()
        return {tuple(s for s, c in enumerate(pixel) if c) for pixel in covered} - {()}

    def token_mask(self, tokens_per_subject: int, dtype: torch.dtype, device: torch.device) -> TokenMask:
        key = (tokens_per_subject, dtype, device)
        if key not in self._masks:
            self._masks[key] = _token_mask(self.routes.to(device), tokens_per_subject, dtype)
        return self._masks[key]


def _token_mask(routes: torch.Tensor, tokens_per_subject: int, dtype: torch.dtype) -> TokenMask:
    num_subjects, num_pixels = routes.shape
    covered = routes > 0  # [S, N]
    soft = bool((covered & (routes < 1)).any())
    pixel_covered = covered.any(dim=0)  # [N]
    if not soft and bool(covered.all()):
        return TokenMask(None, None, None)  # every pixel attends to every token: no mask at all
    coverage = None
    if not soft and not bool(pixel_covered.all()):
        coverage = pixel_covered.to(dtype)[:, None]
    zero = torch.zeros((), dtype=dtype, device=routes.device)
    blocked = torch.full((), float("-inf"), dtype=dtype, device=routes.device)
    allowed = covered | ~pixel_covered  # an uncovered pixel attends to everything, its output is then zeroed
    bias = torch.where(allowed.T, zero, blocked)[:, :, None].expand(-1, -1, tokens_per_subject)
    bias = bias.reshape(num_pixels, num_subjects * tokens_per_subject)
    weights = None
    if soft:
        weights = routes.T.to(torch.float32)[:, :, None].expand(-1, -1, tokens_per_subject).reshape(num_pixels, -1)
    return TokenMask(bias, weights, coverage)
