"""Where each MS-Diffusion adapter layer sits in ComfyUI's SDXL UNet.

``ms_adapter.{i}`` with odd ``i`` is the i-th attention processor of the diffusers UNet
(even ones are self-attention). ComfyUI names the same cross-attention by its attn2 replace
key ``(block, number, transformer_index)``; the middle block is ``("middle", 0)``.
"""

from __future__ import annotations

from typing import NamedTuple

from ...layer_map import AttnKey


class BlockSpan(NamedTuple):
    block: str
    number: int
    transformers: int
    downscale: int  # latent pixels per attention token at this block


# diffusers processor order: down blocks, up blocks, then the middle block.
SDXL_BLOCKS: tuple[BlockSpan, ...] = (
    BlockSpan("input", 4, 2, 2),
    BlockSpan("input", 5, 2, 2),
    BlockSpan("input", 7, 10, 4),
    BlockSpan("input", 8, 10, 4),
    BlockSpan("output", 0, 10, 4),
    BlockSpan("output", 1, 10, 4),
    BlockSpan("output", 2, 10, 4),
    BlockSpan("output", 3, 2, 2),
    BlockSpan("output", 4, 2, 2),
    BlockSpan("output", 5, 2, 2),
    BlockSpan("middle", 0, 10, 4),
)

SDXL_CROSS_ATTENTION_KEYS: tuple[AttnKey, ...] = tuple(
    (span.block, span.number, t) for span in SDXL_BLOCKS for t in range(span.transformers)
)
SDXL_ADAPTER_INDICES: tuple[int, ...] = tuple(2 * n + 1 for n in range(len(SDXL_CROSS_ATTENTION_KEYS)))
SDXL_DOWNSCALES: tuple[int, ...] = tuple(sorted({span.downscale for span in SDXL_BLOCKS}))


def sdxl_key_for_index(index: int) -> AttnKey:
    """ComfyUI attn2 key of ``ms_adapter.{index}``."""
    if index % 2 == 0 or not 1 <= index <= SDXL_ADAPTER_INDICES[-1]:
        raise KeyError(f"ms_adapter.{index} is not an SDXL cross-attention layer (odd 1..{SDXL_ADAPTER_INDICES[-1]})")
    return SDXL_CROSS_ATTENTION_KEYS[(index - 1) // 2]
