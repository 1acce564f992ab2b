"""The image branch of MS-Diffusion's cross-attention, routed by covering set.

Each pixel attends, in one softmax, only to the tokens of the subjects that cover it; the
per-subject scale multiplies that subject's attention probabilities, which is the same as
multiplying its values (done once, when the keys/values are projected). Pixels covered by no
subject receive exactly zero.
"""

from __future__ import annotations

from typing import Callable

import torch

from .routing import RouteGroup

AttentionFn = Callable[..., torch.Tensor]  # (q, k, v, heads) -> out, ComfyUI's signature


def routed_image_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    groups: list[RouteGroup],
    heads: int,
    attention: AttentionFn,
) -> torch.Tensor:
    """[P, N, C] image-branch output for queries ``q`` [P, N, C].

    ``keys``/``values`` are [S, T, C]: the projected tokens of S subjects (values already
    scaled). ``attention`` is a ComfyUI attention function (``optimized_attention``).
    """
    rows, num_pixels, channels = q.shape
    out = q.new_zeros(rows, num_pixels, channels)
    for group in groups:
        subjects = list(group.subjects)
        k = keys[subjects].reshape(1, -1, channels).expand(rows, -1, -1)
        v = values[subjects].reshape(1, -1, channels).expand(rows, -1, -1)
        q_group = q if group.pixels is None else q.index_select(1, group.pixels)
        if group.weights is None:
            result = attention(q_group, k, v, heads)
        else:
            tokens_per_subject = keys.shape[1]
            result = weighted_attention(q_group, k, v, heads, group.weights.repeat_interleave(tokens_per_subject, dim=1))
        if group.pixels is None:
            out += result
        else:
            out.index_copy_(1, group.pixels, result.to(out.dtype))
    return out


def weighted_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, token_weights: torch.Tensor) -> torch.Tensor:
    """Attention whose probabilities are multiplied per (pixel, token) after the softmax."""
    rows, num_pixels, channels = q.shape
    dim_head = channels // heads
    qh, kh, vh = (t.reshape(rows, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)).float() * dim_head**-0.5
    probs = scores.softmax(dim=-1) * token_weights.to(torch.float32)
    out = probs.to(vh.dtype) @ vh
    return out.transpose(1, 2).reshape(rows, num_pixels, channels)
