"""Where SSR-Encoder's 16 layers sit in ComfyUI's SD1.5 UNet.

``{n}.to_k_SSR`` with odd ``n`` is the n-th processor of diffusers' ``unet.attn_processors``
(down blocks, then up blocks, then the middle block; even ones are self-attention). ComfyUI
names each cross-attention by its attn2 key ``(block, number, transformer_index)`` and runs the
middle block between input and output, so the map goes by name, never by running index.
"""

from __future__ import annotations

from typing import NamedTuple

from ...layer_map import AttnKey


class SSRLayer(NamedTuple):
    key: AttnKey
    width_mult: int  # hidden width / model_channels (SD1.5: 320, 640, 1280)
    downscale: int  # latent pixels per attention token


SD15_LAYERS: dict[int, SSRLayer] = {
    1: SSRLayer(("input", 1, 0), 1, 1),
    3: SSRLayer(("input", 2, 0), 1, 1),
    5: SSRLayer(("input", 4, 0), 2, 2),
    7: SSRLayer(("input", 5, 0), 2, 2),
    9: SSRLayer(("input", 7, 0), 4, 4),
    11: SSRLayer(("input", 8, 0), 4, 4),
    13: SSRLayer(("output", 3, 0), 4, 4),
    15: SSRLayer(("output", 4, 0), 4, 4),
    17: SSRLayer(("output", 5, 0), 4, 4),
    19: SSRLayer(("output", 6, 0), 2, 2),
    21: SSRLayer(("output", 7, 0), 2, 2),
    23: SSRLayer(("output", 8, 0), 2, 2),
    25: SSRLayer(("output", 9, 0), 1, 1),
    27: SSRLayer(("output", 10, 0), 1, 1),
    29: SSRLayer(("output", 11, 0), 1, 1),
    31: SSRLayer(("middle", 0, 0), 4, 8),
}
SD15_DOWNSCALES: tuple[int, ...] = tuple(sorted({layer.downscale for layer in SD15_LAYERS.values()}))


def sd15_key(index: int) -> AttnKey:
    """ComfyUI attn2 key of the checkpoint's layer ``index``."""
    if index not in SD15_LAYERS:
        raise KeyError(f"layer {index} is not an SD1.5 cross-attention (odd 1..31)")
    return SD15_LAYERS[index].key
