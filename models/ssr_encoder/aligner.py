"""The token-to-patch aligner: query tokens attend to CLIP patches, once per CLIP depth.

One attention map, from the query to the patches of the deepest CLIP layer, is shared by six
value/output projections (one per CLIP layer 4, 8, ..., 24); the six outputs are concatenated
along tokens and layer-normalised. Keys follow the community ``ssr_aligner.safetensors``
layout (``to_q``, ``to_k``, ``to_v.{i}``, ``to_out.{i}``, ``norm.*``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ALIGNER_HEADS = 8  # the official aligner always has 8 heads (8 x 64 at full size)
CLIP_DEPTHS = 6  # CLIP layers 4, 8, 12, 16, 20, 24


class SSRAligner(nn.Module):
    """Query [B, Q, T] + CLIP features [B, 6*N, C] -> subject tokens [B, 6*Q, T]."""

    def __init__(self, query_dim: int, feature_dim: int, inner_dim: int, depths: int = CLIP_DEPTHS, heads: int = ALIGNER_HEADS):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(feature_dim, inner_dim, bias=False)
        self.to_v = nn.ModuleList(nn.Linear(feature_dim, inner_dim, bias=False) for _ in range(depths))
        self.to_out = nn.ModuleList(nn.Linear(inner_dim, query_dim, bias=False) for _ in range(depths))
        self.norm = nn.LayerNorm(query_dim)

    @property
    def query_dim(self) -> int:
        return self.to_q.in_features

    @property
    def feature_dim(self) -> int:
        return self.to_k.in_features

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, query: torch.Tensor, features: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias`` [B or 1, N] is added to every query's logits over the N patches (the mask query)."""
        chunks = features.chunk(len(self.to_v), dim=1)
        q = self._heads(self.to_q(query))
        k = self._heads(self.to_k(chunks[-1]))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias[:, None, None, :].to(scores.dtype)
        probs = scores.softmax(dim=-1)
        outs = [
            to_out((probs @ self._heads(to_v(chunk))).transpose(1, 2).flatten(2))
            for chunk, to_v, to_out in zip(chunks, self.to_v, self.to_out)
        ]
        return self.norm(torch.cat(outs, dim=1))


def mask_query_bias(grid_mask: torch.Tensor, weight: float) -> torch.Tensor:
    """[B, 1 + g*g] logit bias of a mask query: +1 on CLS, m*w + m*w^2 - w on each patch.

    ``grid_mask`` [B, g, g] is the binarised mask resized to the patch grid (row-major, like the
    CLIP patches). The double weighting inside the mask is the official math, kept for parity.
    """
    m = grid_mask.flatten(1).to(torch.float32)
    patches = m * weight + m * weight * weight - weight
    return F.pad(patches, (1, 0), value=1.0)
