"""FastComposer's fusion MLP ("postfuse"): one fused vector per subject token.

At a subject's token, with text vector t and object embedding e:
``out = LayerNorm(mlp2(mlp1(cat(t, e)) + t))``, mlp1 without and mlp2 with its own residual,
GELU (erf), every LayerNorm eps 1e-5. Every other token is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally plus its input (the official ``MLP``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool):
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class PostfuseModule(nn.Module):
    """Official ``FastComposerPostfuseModule`` (keys ``mlp1.*``, ``mlp2.*``, ``layer_norm.*``)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.mlp1 = FusionMLP(embed_dim * 2, embed_dim, embed_dim, residual=False)
        self.mlp2 = FusionMLP(embed_dim, embed_dim, embed_dim, residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    @property
    def embed_dim(self) -> int:
        return self.layer_norm.normalized_shape[0]

    def fuse(self, text: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """[..., D] text vectors and object embeddings -> [..., D] fused vectors."""
        fused = self.mlp1(torch.cat([text, objects], dim=-1)) + text
        return self.layer_norm(self.mlp2(fused))

    def forward(self, text_embeds: torch.Tensor, object_embeds: torch.Tensor, token_mask: torch.Tensor,
                num_objects: torch.Tensor) -> torch.Tensor:
        """The official batch rule, on a copy: the k-th True of ``token_mask`` (row-major) takes the k-th valid object.

        ``text_embeds`` [B, T, D], ``object_embeds`` [B, M, 1, D] (slots past ``num_objects[b]`` are
        padding), ``token_mask`` [B, T] bool, ``num_objects`` [B].
        """
        slots = torch.arange(object_embeds.shape[1], device=object_embeds.device)
        valid = object_embeds[slots[None] < num_objects.to(object_embeds.device)[:, None]].reshape(-1, text_embeds.shape[-1])
        flagged = int(token_mask.sum())
        if flagged != valid.shape[0]:
            raise ValueError(f"{flagged} subject token(s) but {valid.shape[0]} object embedding(s)")
        out = text_embeds.clone()
        out[token_mask] = self.fuse(text_embeds[token_mask], valid.to(text_embeds.dtype))
        return out
