"""AnyStory's redux and router embedders: Redux's MLP plus a LoRA, a sigmoid gate and masked pooling.

Per subject, SigLIP's 27x27 patch features go through ``silu(up(x) + lora_up(x))``, then
``down(h) + lora_down(h)``; a sigmoid gate weighs every patch and a gate-weighted average
pools the grid to 9x9 (redux, 81 tokens) or 3x3 (router, 9 tokens). A cell is kept when any
of its patches touches the subject mask; the others become zero tokens. The base ``up``/
``down`` weights are Redux's (the artist's flux1-redux-dev style model) unless the AnyStory
file carries its own copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

REDUX_GRID = 9
ROUTER_GRID = 3
GATE_EPS = 1e-6


class GatedPoolingEmbedder(nn.Module):
    def __init__(self, state: dict[str, torch.Tensor], output_grid: int):
        super().__init__()
        self.output_grid = output_grid
        for key, tensor in state.items():
            self.register_buffer(key.replace(".", "_"), tensor.clone(), persistent=True)

    def _weight(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A stored tensor in ``x``'s dtype: files come in fp32, fp16, bf16 or fp8, and the Redux weights in another one."""
        return getattr(self, name).to(device=x.device, dtype=x.dtype)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        base = F.linear(x, self._weight(f"{name}_weight", x), self._weight(f"{name}_bias", x))
        low = F.linear(F.linear(x, self._weight(f"{name}_lora_A_weight", x)), self._weight(f"{name}_lora_B_weight", x),
                       self._weight(f"{name}_lora_B_bias", x))
        return base + low

    @property
    def feature_dim(self) -> int:
        return self.redux_up_weight.shape[1]

    def forward(self, features: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, T, D] SigLIP tokens (T a square) and [N, T, 1] token mask -> [N, grid², C] tokens, in the features' dtype."""
        hidden = F.silu(self._linear(features, "redux_up"))
        out = self._linear(hidden, "redux_down")
        gate = torch.sigmoid(F.linear(out, self._weight("gate_proj_weight", out), self._weight("gate_proj_bias", out)))
        n, tokens, channels = out.shape
        side = math.isqrt(tokens)
        grid = (out * gate).transpose(1, 2).reshape(n, channels, side, side)
        pooled = F.adaptive_avg_pool2d(grid, self.output_grid)
        weight = F.adaptive_avg_pool2d(gate.transpose(1, 2).reshape(n, 1, side, side), self.output_grid)
        pooled = pooled / (weight + GATE_EPS)
        if token_mask is not None:
            kept = F.adaptive_avg_pool2d(token_mask.transpose(1, 2).reshape(n, 1, side, side).to(out.dtype), self.output_grid) > 0
            pooled = pooled * kept
        return pooled.flatten(2).transpose(1, 2)


def embedder_state(lora_state: dict[str, torch.Tensor], redux_base: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The embedder's tensors: its own base Redux copies when the file has them, else Redux's."""
    state = dict(lora_state)
    for key in ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias"):
        if key not in state:
            if redux_base is None or key not in redux_base:
                raise KeyError(key)
            state[key] = redux_base[key]
    return state
