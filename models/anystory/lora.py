"""Low-rank deltas that act on one stream only, next to (never merged into) a base weight.

A PEFT LoRA of a diffusers module lands on a ComfyUI module whose weight may fuse several
diffusers modules (``qkv``, ``linear1``); its delta ``x·Aᵀ·Bᵀ`` is added to the output rows
that module owns. The base weight is never touched, so the same model serves the plain image
stream, works with fp8/GGUF weights and with ComfyUI's offloading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, eq=False)
class LowRank:
    """One delta: ``scale · (x·Aᵀ·Bᵀ + b)`` added to output rows ``rows`` (None = all) of its target."""

    down: torch.Tensor  # A [r, in]
    up: torch.Tensor  # B [out, r]
    bias: torch.Tensor | None = None  # [out] (the routing-map and embedder LoRAs carry one)
    rows: tuple[int, int] | None = None
    scale: float = 1.0

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(F.linear(x, self.down), self.up, self.bias)
        return out if self.scale == 1.0 else out * self.scale

    def scaled(self, scale: float) -> LowRank:
        return LowRank(self.down, self.up, self.bias, self.rows, scale)


@dataclass(eq=False)
class StreamLoRA:
    """Every delta of one stream, by the ComfyUI module path it acts on (e.g. ``double_blocks.0.img_attn.qkv``)."""

    deltas: dict[str, tuple[LowRank, ...]] = field(default_factory=dict)

    def add(self, target: str, delta: LowRank) -> None:
        self.deltas[target] = self.deltas.get(target, ()) + (delta,)

    def targets(self) -> list[str]:
        return sorted(self.deltas)

    def __call__(self, target: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (the base module's output for ``x``) plus this stream's deltas on ``target``."""
        deltas = self.deltas.get(target)
        if not deltas:
            return out
        out = out.clone()
        for d in deltas:
            if d.rows is None:
                out += d.delta(x)
            else:
                out[..., d.rows[0]:d.rows[1]] += d.delta(x)
        return out

    def scaled(self, scale: float) -> StreamLoRA:
        return StreamLoRA({k: tuple(d.scaled(d.scale * scale) for d in v) for k, v in self.deltas.items()})


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    """A parameter sharing ``tensor``'s storage (no copy), never trained."""
    return nn.Parameter(tensor, requires_grad=False)


class LowRankWeights(nn.Module):
    """One :class:`LowRank`'s tensors as frozen parameters, so a ModelPatcher moves and counts them."""

    def __init__(self, delta: LowRank):
        super().__init__()
        self.down, self.up = frozen(delta.down), frozen(delta.up)
        self.bias = None if delta.bias is None else frozen(delta.bias)
        self.rows, self.scale = delta.rows, delta.scale

    def low_rank(self, device, dtype) -> LowRank:
        """The delta on ``device`` in ``dtype``: the parameters themselves when they already are, else cast copies."""
        bias = None if self.bias is None else self.bias.to(device, dtype)
        return LowRank(self.down.to(device, dtype), self.up.to(device, dtype), bias, self.rows, self.scale)


class StreamLoRAWeights(nn.Module):
    """A :class:`StreamLoRA` held as parameters (module names cannot contain the targets' dots: a list plus an index)."""

    def __init__(self, stream: StreamLoRA):
        super().__init__()
        self.deltas = nn.ModuleList(LowRankWeights(d) for deltas in stream.deltas.values() for d in deltas)
        self.targets: dict[str, range] = {}
        for target, deltas in stream.deltas.items():
            start = sum(len(r) for r in self.targets.values())
            self.targets[target] = range(start, start + len(deltas))

    def stream_lora(self, device, dtype) -> StreamLoRA:
        return StreamLoRA({target: tuple(self.deltas[i].low_rank(device, dtype) for i in indices)
                           for target, indices in self.targets.items()})
