"""The MS-Diffusion subject encoder: grounded resampler + per-layer image key/value projections.

Parameter names follow ``ms_adapter.bin`` (``image_proj.*``, ``ms_adapter.{i}.to_k_ip.weight``),
so an official state dict loads strictly. The learned ``dummy_image_tokens`` are not kept:
routing gives background pixels exactly zero image contribution, which is what the dummy
tokens achieve in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from .resampler import GroundingResampler, ResamplerConfig


class ImageKeyValueProjection(nn.Module):
    """``to_k_ip`` / ``to_v_ip`` of one cross-attention layer."""

    def __init__(self, cross_attention_dim: int, hidden_size: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    @property
    def hidden_size(self) -> int:
        return self.to_k_ip.out_features


class MSDiffusionEncoder(nn.Module):
    """Everything ``ms_adapter.bin`` holds that affects the output."""

    def __init__(self, resampler_config: ResamplerConfig, layer_hidden_sizes: dict[int, int]):
        super().__init__()
        self.image_proj = GroundingResampler(resampler_config)
        cross_dim = resampler_config.output_dim
        self.ms_adapter = nn.ModuleDict(
            {str(index): ImageKeyValueProjection(cross_dim, hidden) for index, hidden in sorted(layer_hidden_sizes.items())}
        )

    @property
    def config(self) -> ResamplerConfig:
        return self.image_proj.config

    @property
    def cross_attention_dim(self) -> int:
        return self.config.output_dim

    @property
    def layer_indices(self) -> list[int]:
        return sorted(int(i) for i in self.ms_adapter.keys())

    def layer(self, index: int) -> ImageKeyValueProjection:
        return self.ms_adapter[str(index)]

    def encode_subjects(
        self,
        image_features: torch.Tensor,
        phrase_embeds: torch.Tensor,
        boxes: torch.Tensor,
        drop_grounding: bool = False,
    ) -> torch.Tensor:
        """Resampler tokens for N subjects: [N, num_queries, cross_attention_dim]."""
        return self.image_proj(image_features, phrase_embeds, boxes, drop_grounding)

    def project_tokens(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image keys and values of layer ``index`` for the given tokens."""
        layer = self.layer(index)
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)
