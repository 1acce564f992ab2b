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
        self._layers: dict[int, dict[str, dict[tuple[int, int], torch.Tensor]]] = {}  # step -> layer -> (h, w) -> sum
        self._layer_counts: dict[int, dict[str, dict[tuple[int, int], int]]] = {}

    def __deepcopy__(self, memo):
        return self

    def start_run(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._layers.clear()
        self._layer_counts.clear()

    def add(self, step: int, height: int, width: int, routes: torch.Tensor, layer: str | None = None) -> None:
        """``routes`` [S, h*w] (or [P, S, h*w], averaged over rows) used by one layer call (named ``layer`` if given)."""
        if routes.dim() == 3:
            routes = routes.mean(dim=0)
        routes = routes.detach().to("cpu", torch.float32).reshape(-1, height, width)
        key = (height, width)
        _accumulate(self._sums.setdefault(step, {}), self._counts.setdefault(step, {}), key, routes)
        if layer is not None:
            _accumulate(self._layers.setdefault(step, {}).setdefault(layer, {}),
                        self._layer_counts.setdefault(step, {}).setdefault(layer, {}), key, routes)

    @property
    def layers(self) -> list[str]:
        """Names of the layers recorded in any step, in recording order."""
        return list(dict.fromkeys(name for step in self._layers.values() for name in step))

    @property
    def steps(self) -> list[int]:
        return sorted(self._sums)

    def routes_at(self, step: int, layers: list[str] | None = None) -> dict[tuple[int, int], torch.Tensor]:
        """Mean route per resolution at ``step`` over all layers or the named ones ({} if not recorded)."""
        if not layers:
            return {key: total / self._counts[step][key] for key, total in self._sums.get(step, {}).items()}
        sums: dict = {}
        counts: dict = {}
        for layer in layers:
            for key, total in self._layers.get(step, {}).get(layer, {}).items():
                sums[key] = total if key not in sums else sums[key] + total
                counts[key] = counts.get(key, 0) + self._layer_counts[step][layer][key]
        return {key: total / counts[key] for key, total in sums.items()}


def _accumulate(sums: dict, counts: dict, key, routes: torch.Tensor) -> None:
    sums[key] = routes if key not in sums else sums[key] + routes
    counts[key] = counts.get(key, 0) + 1
