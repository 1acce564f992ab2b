"""MS-Diffusion's grounded perceiver resampler, with the official parameter names.

Turns the CLIP-Vision hidden states of one reference plus its phrase embedding and box into
``num_queries`` tokens in the UNet's cross-attention space. Subjects are independent: the
batch dimension is the subject dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BOX_COORDINATES = 4


@dataclass(frozen=True)
class ResamplerConfig:
    dim: int
    depth: int
    heads: int
    dim_head: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int
    phrase_dim: int
    fourier_freqs: int = 8

    @property
    def grounding_dim(self) -> int:
        return self.phrase_dim + fourier_embedding_dim(self.fourier_freqs)


def fourier_embedding_dim(num_freqs: int) -> int:
    return num_freqs * 2 * BOX_COORDINATES


def fourier_embed(boxes: torch.Tensor, num_freqs: int = 8, temperature: float = 100.0) -> torch.Tensor:
    """Sin/cos box embedding, frequency-major: per frequency [sin x1,y1,x2,y2, cos x1,y1,x2,y2]."""
    freqs = temperature ** (torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype) / num_freqs)
    angles = boxes.unsqueeze(-1) * freqs  # [N, 4, F]
    embedded = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [N, 4, F, 2]
    return embedded.permute(0, 2, 3, 1).reshape(boxes.shape[0], -1)


class PerceiverAttention(nn.Module):
    """Latent queries attend to [image features; latents]."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features = self.norm1(features)
        latents = self.norm2(latents)
        batch, length, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((features, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.view(batch, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class GroundingResampler(nn.Module):
    """The ``image_proj`` part of ``ms_adapter.bin``."""

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.config = config
        c = config
        self.grounding_latents = nn.Parameter(torch.zeros(1, c.num_queries, c.dim))
        self.latent_proj = nn.Sequential(
            nn.Linear(c.grounding_dim, c.grounding_dim * 2),
            nn.GELU(),
            nn.Linear(c.grounding_dim * 2, c.dim * c.num_queries),
        )
        self.latent_norm = nn.LayerNorm(c.dim)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim)
        self.attention_norm = nn.LayerNorm(c.dim)
        self.proj_out = nn.Linear(c.dim, c.output_dim)
        self.norm_out = nn.LayerNorm(c.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )

    def grounding_queries(self, phrase_embeds: torch.Tensor, boxes: torch.Tensor, drop_grounding: torch.Tensor) -> torch.Tensor:
        """Initial latents from [phrase; Fourier(box)], or the learned latents where dropped."""
        c = self.config
        grounding = torch.cat((phrase_embeds, fourier_embed(boxes, c.fourier_freqs)), dim=-1)
        latents = self.latent_norm(self.latent_proj(grounding).view(-1, c.num_queries, c.dim))
        learned = self.grounding_latents.expand_as(latents)
        return torch.where(drop_grounding.view(-1, 1, 1), learned, latents)

    def forward(
        self,
        image_features: torch.Tensor,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: torch.Tensor | bool = False,
    ) -> torch.Tensor:
        """[N, T, embedding_dim] features of N subjects -> [N, num_queries, output_dim] tokens."""
        if not isinstance(drop_grounding, torch.Tensor):
            drop_grounding = torch.full((image_features.shape[0],), bool(drop_grounding))
        latents = self.grounding_queries(phrase_embeds, boxes, drop_grounding.to(device=boxes.device, dtype=torch.bool))
        features = self.proj_in(image_features)
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(self.attention_norm(latents)))
