"""The SSR keys/values of every SD1.5 cross-attention: ``{n}.to_k_SSR`` / ``{n}.to_v_SSR``.

``n`` is the layer's position among diffusers' ``unet.attn_processors`` (odd: attn2 only).
Each projection maps the 768-wide subject tokens to the layer's hidden width, without bias.
"""

from __future__ import annotations

import torch
from torch import nn


class SSRProjection(nn.Module):
    def __init__(self, token_dim: int, hidden: int):
        super().__init__()
        self.to_k_SSR = nn.Linear(token_dim, hidden, bias=False)
        self.to_v_SSR = nn.Linear(token_dim, hidden, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.to_k_SSR.out_features

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k_SSR(tokens), self.to_v_SSR(tokens)


class SSRLayers(nn.ModuleDict):
    """The projections of the checkpoint's layers, keyed by their index ``n``: state-dict keys exactly as released."""

    def __init__(self, token_dim: int, hidden_sizes: dict[int, int]):
        super().__init__({str(n): SSRProjection(token_dim, h) for n, h in sorted(hidden_sizes.items())})

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.keys())

    @property
    def token_dim(self) -> int:
        return next(iter(self.values())).to_k_SSR.in_features

    def layer(self, index: int) -> SSRProjection:
        return self[str(index)]
