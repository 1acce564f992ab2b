"""Projected image keys/values of every subject for every patched layer.

Computed once per Apply (the tokens and the projections do not change during sampling) and
held in an ``nn.Module`` so that a ModelPatcher, and thus ComfyUI's memory manager, moves
them with the UNet.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer_map import AttnKey


def key_name(key: AttnKey) -> str:
    return "_".join(str(part) for part in key)


class LayerTokens(nn.Module):
    """[S, T, C] keys and (scaled) values of one layer."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        super().__init__()
        self.key = nn.Parameter(key, requires_grad=False)
        self.value = nn.Parameter(value, requires_grad=False)


class SubjectBank(nn.Module):
    """Per layer: the subjects' keys/values for the positive rows and, optionally, the ones the negative rows attend to.

    Kinds whose unconditional pass sees tokens of its own (SSR-Encoder's empty-query/zero-image
    tokens) give ``negative`` projections shaped like the positive ones (one row per subject),
    so the negative rows are routed exactly like the positive rows.
    """

    def __init__(self, projections: dict[AttnKey, tuple[torch.Tensor, torch.Tensor]],
                 negative: dict[AttnKey, tuple[torch.Tensor, torch.Tensor]] | None = None):
        super().__init__()
        self.layers = nn.ModuleDict({key_name(key): LayerTokens(k, v) for key, (k, v) in projections.items()})
        self.negative_layers = nn.ModuleDict({key_name(key): LayerTokens(k, v) for key, (k, v) in (negative or {}).items()})

    def layer(self, key: AttnKey, negative: bool = False) -> LayerTokens:
        return (self.negative_layers if negative else self.layers)[key_name(key)]

    @property
    def has_negative(self) -> bool:
        return len(self.negative_layers) > 0

    @property
    def num_subjects(self) -> int:
        return next(iter(self.layers.values())).key.shape[0]
