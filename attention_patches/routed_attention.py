"""The image branch of MS-Diffusion's cross-attention, routed per pixel.

Each pixel attends, in one softmax, only to the tokens of the subjects that cover it; the
per-subject scale multiplies that subject's attention probabilities, which is the same as
multiplying its values (done once, when the keys/values are projected). Pixels covered by no
subject receive exactly zero.

All pixels run in one fused attention (``scaled_dot_product_attention``) over every subject's
tokens, under the additive mask of :class:`routing.RouteMask`: one kernel whatever the number
of subjects and overlaps, no gather/scatter copies of the queries or outputs; uncovered pixels
are zeroed by one multiply afterwards. Its cost is close to the lower bound of the image
branch: one attention of the positive rows over all subject tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .routing import RouteMask, TokenMask

SCORE_ELEMENTS_PER_CHUNK = 1 << 24  # bounds the memory of explicit (feathered) attention scores


def routed_image_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, routes: RouteMask, heads: int) -> torch.Tensor:
    """[P, N, C] image-branch output for queries ``q`` [P, N, C].

    ``keys``/``values`` are [S, T, C]: the projected tokens of S subjects (values already scaled).
    """
    subjects, tokens_per_subject, channels = keys.shape
    if routes.num_subjects != subjects:
        raise ValueError(f"routes for {routes.num_subjects} subject(s) but tokens for {subjects}")
    mask = routes.token_mask(tokens_per_subject, q.dtype, q.device)
    k = keys.reshape(1, -1, channels).to(q.dtype)
    v = values.reshape(1, -1, channels).to(q.dtype)
    out = fused_routed_attention(q, k, v, heads, mask)
    return out.mul_(mask.coverage) if mask.coverage is not None else out


def fused_routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: TokenMask) -> torch.Tensor:
    """One attention of q [P, N, C] over k, v [1, T', C] under ``mask``."""
    rows, num_pixels, channels = q.shape
    dim_head = channels // heads
    qh = q.unflatten(-1, (heads, dim_head)).transpose(1, 2)
    kh = k.unflatten(-1, (heads, dim_head)).transpose(1, 2).expand(rows, -1, -1, -1)
    vh = v.unflatten(-1, (heads, dim_head)).transpose(1, 2).expand(rows, -1, -1, -1)
    if mask.weights is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask.bias)
    else:
        out = _weighted_masked_attention(qh, kh, vh, mask.bias, mask.weights)
    return out.transpose(1, 2).reshape(rows, num_pixels, channels)


def _weighted_masked_attention(qh, kh, vh, bias, weights):
    """softmax(q k^T / sqrt(d) + bias) * weights @ v, head chunk by head chunk (feathered routes)."""
    rows, heads, num_pixels, dim_head = qh.shape
    out = torch.empty_like(qh)
    step = max(1, SCORE_ELEMENTS_PER_CHUNK // max(1, rows * num_pixels * kh.shape[-2]))
    weights = weights.to(torch.float32)
    for h0 in range(0, heads, step):
        h = slice(h0, h0 + step)
        scores = torch.matmul(qh[:, h], kh[:, h].transpose(-1, -2)).float() * dim_head**-0.5
        if bias is not None:
            scores += bias.to(torch.float32)
        out[:, h] = (scores.softmax(dim=-1) * weights).to(vh.dtype) @ vh[:, h]
    return out
