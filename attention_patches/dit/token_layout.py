"""Where each part of one DiT model call sits in the joint attention sequence: [text | target | references].

FLUX (and FLUX.2) concatenate the text stream before the image stream, and ``_forward`` appends
every reference latent's tokens after the target's; Qwen-Image does the same. One layout is
computed per model call from the actual tensors, so a mask always matches the sequence it masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Token counts of one call; the grids are (rows, columns) of image tokens."""

    text: int
    target_grid: tuple[int, int]
    reference_grids: tuple[tuple[int, int], ...] = ()
    target_cells: tuple[int, int] | None = None  # the target latent's (height, width) before patching, when known

    @property
    def target(self) -> int:
        return self.target_grid[0] * self.target_grid[1]

    @property
    def references(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.reference_grids)

    @property
    def total(self) -> int:
        return self.text + self.target + sum(self.references)

    @property
    def text_span(self) -> tuple[int, int]:
        return 0, self.text

    @property
    def target_span(self) -> tuple[int, int]:
        return self.text, self.text + self.target

    @property
    def reference_spans(self) -> tuple[tuple[int, int], ...]:
        spans, start = [], self.text + self.target
        for count in self.references:
            spans.append((start, start + count))
            start += count
        return tuple(spans)


def token_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """Tokens per column and row of a latent of ``height`` x ``width`` with ``patch`` x ``patch`` patches (padded as ComfyUI pads)."""
    return (height + patch // 2) // patch, (width + patch // 2) // patch


def joint_layout(text_tokens: int, x: torch.Tensor, references: list[torch.Tensor] | tuple = (), patch: int = 2) -> TokenLayout:
    """The layout of a call on latent ``x`` [B, C, H, W] with reference latents [1, C, h, w] appended in order."""
    return TokenLayout(text_tokens, token_grid(x.shape[-2], x.shape[-1], patch),
                       tuple(token_grid(r.shape[-2], r.shape[-1], patch) for r in references), tuple(x.shape[-2:]))
