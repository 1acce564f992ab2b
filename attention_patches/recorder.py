"""Capture of the routes the model actually used, for Router Mask Preview.

Model clones and sampler runs deep-copy ``model_options``; a recorder must survive that to be
read after sampling, so deep-copying returns the same object. Each sampling run starts it
afresh, so nothing from an earlier run is ever shown.
"""

from __future__ import annotations

import torch


class RouteRecorder:
    """Per step and attention resolution: the layer-averaged [S, h, w] routes of the latest run."""

    def __init__(self):
        self._sums: dict[int, dict[tuple[int, int], torch.Tensor]] = {}
        self._counts: dict[int, dict[tuple[int, int], int]] = {}

    def __deepcopy__(self, memo):
        return self

    def start_run(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def add(self, step: int, height: int, width: int, routes: torch.Tensor) -> None:
        """``routes`` [S, h*w] (or [P, S, h*w], averaged over rows) used by one layer call."""
        if routes.dim() == 3:
            routes = routes.mean(dim=0)
        routes = routes.detach().to("cpu", torch.float32).reshape(-1, height, width)
        sums, counts = self._sums.setdefault(step, {}), self._counts.setdefault(step, {})
        key = (height, width)
        sums[key] = routes if key not in sums else sums[key] + routes
        counts[key] = counts.get(key, 0) + 1

    @property
    def steps(self) -> list[int]:
        return sorted(self._sums)

    def routes_at(self, step: int) -> dict[tuple[int, int], torch.Tensor]:
        """Mean route per resolution at ``step`` ({} if that step was not recorded)."""
        return {key: total / self._counts[step][key] for key, total in self._sums.get(step, {}).items()}
