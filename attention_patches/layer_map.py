"""Attention-layer keys and grids shared by every kind (each kind owns its own layer table)."""

from __future__ import annotations

AttnKey = tuple[str, int, int]  # ComfyUI's attn2 replace key: (block, number, transformer_index)


def latent_grid(latent_size: int, downscale: int) -> int:
    """Token grid size of a UNet level: each stride-2 convolution rounds up."""
    size = latent_size
    while downscale > 1:
        size = (size + 1) // 2
        downscale //= 2
    return size
