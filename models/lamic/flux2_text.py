"""Where LAMIC's text groups sit in a FLUX.2 [dev] context.

ComfyUI encodes the prompt inside Mistral's chat template
(``[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]{prompt}[/INST]``, comfy.text_encoders.flux.Flux2Tokenizer)
without padding, and ``model_base.Flux2.extra_conds`` then pads the context to 512 tokens on the
LEFT with zero vectors. So a context row is::

    [zero padding (512 - n) | template + prompt (n)]

The zero rows are LAMIC's padding group (EPrt, fully connected), now at the start; the encoded
template and prompt form the CEI (the system prompt's states are part of how the prompt is read,
and its token count depends on the tekken vocabulary that ships inside the text-encoder file, not
with ComfyUI). FLUX.2's text holds no per-reference piece, so its SAD groups are empty.
A text of 512 tokens or more has no padding group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONTEXT_TOKENS = 512  # model_base.Flux2.extra_conds pads to this


@dataclass(frozen=True)
class Flux2Spans:
    """[start, end) of the padding group and of the CEI in one context row."""

    padding: tuple[int, int]
    cei: tuple[int, int]


def left_padding(row: torch.Tensor) -> int:
    """How many leading tokens of ``row`` [L, D] are exact zero vectors (extra_conds' padding)."""
    nonzero = row.ne(0).any(dim=-1)
    if not bool(nonzero.any()):
        return row.shape[0]
    return int(nonzero.to(torch.int8).argmax())


def row_spans(row: torch.Tensor) -> Flux2Spans:
    """The groups of one context row [L, D]."""
    pad = left_padding(row)
    return Flux2Spans((0, pad), (pad, row.shape[0]))
