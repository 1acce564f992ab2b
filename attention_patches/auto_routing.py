"""Auto routing of the routed cross-attention (MS-Diffusion's pseudo layout), for every kind on that layer:
routes taken from the model's own text attention.

Every layer keeps the running mean, over sampling steps, of each subject's phrase
attention map (softmax over the text tokens, mean over heads and phrase tokens). Once the
layer has seen ``start_step`` steps (the current one included), the subject's route becomes
``minmax_normalise(mean) > mask_threshold`` instead of its box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MINMAX_EPS = 1e-5  # the official normalisation's denominator epsilon
MAP_ELEMENTS_PER_CHUNK = 1 << 24  # bounds the memory of the score tensor


@dataclass(frozen=True)
class AutoRouting:
    """Settings of one Apply node; ``phrase_tokens[s]`` are subject s's positions in the text context."""

    phrase_tokens: tuple[tuple[int, ...], ...]
    mask_threshold: float = 0.5
    start_step: int = 5

    @classmethod
    def of(cls, settings) -> AutoRouting | None:
        """Apply's auto-routing inputs (an ApplySettings), or None when auto routing is off."""
        if not settings.auto_routing:
            return None
        return cls(settings.phrase_tokens, settings.mask_threshold, settings.start_step)


class PromptMismatchError(ValueError):
    """Auto routing's ``prompt`` does not match the conditioning the sampler got."""


def phrase_selectors(phrase_tokens: tuple[tuple[int, ...], ...], text_tokens: int, device: torch.device) -> torch.Tensor:
    """[T, S] float32: column s averages subject s's phrase tokens."""
    beyond = [(s, max(tokens)) for s, tokens in enumerate(phrase_tokens, start=1) if max(tokens) >= text_tokens]
    if beyond:
        subject, position = beyond[0]
        raise PromptMismatchError(
            f"Apply Multi-Subject Attention (auto routing): subject {subject}'s phrase is token {position + 1} of the "
            f"'prompt' input, but the positive conditioning the sampler got has only {text_tokens} tokens. Give 'prompt' "
            "exactly the positive CLIP Text Encode's text (drag one text node's link onto both 'prompt' and its 'text')."
        )
    selectors = torch.zeros(text_tokens, len(phrase_tokens), dtype=torch.float32, device=device)
    for subject, tokens in enumerate(phrase_tokens):
        selectors[list(tokens), subject] = 1.0 / len(tokens)
    return selectors


def phrase_attention_maps(q: torch.Tensor, k: torch.Tensor, heads: int, selectors: torch.Tensor,
                          v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[P, S, N] phrase maps: mean over heads and phrase tokens of softmax(q k^T / sqrt(d)) over all text tokens.

    With ``v``, also the text attention output [P, N, C] from the same probabilities, so a caller
    that needs both computes the softmax once.
    """
    rows, num_pixels, channels = q.shape
    dim_head = channels // heads
    qh = q.reshape(rows, num_pixels, heads, dim_head).transpose(1, 2)
    kh = k.reshape(rows, -1, heads, dim_head).transpose(1, 2)
    vh = v.reshape(rows, -1, heads, dim_head).transpose(1, 2) if v is not None else None
    heads_per_chunk = max(1, MAP_ELEMENTS_PER_CHUNK // max(1, rows * num_pixels * k.shape[1]))
    maps, outs = None, []
    for h0 in range(0, heads, heads_per_chunk):
        h = slice(h0, h0 + heads_per_chunk)
        probs = (qh[:, h] @ kh[:, h].transpose(-1, -2)).float().mul_(dim_head**-0.5).softmax(dim=-1)  # [P, h, N, T]
        if vh is not None:
            outs.append(probs.to(vh.dtype) @ vh[:, h])
        chunk = (probs @ selectors).sum(dim=1).transpose(1, 2)
        maps = chunk if maps is None else maps.add_(chunk)
    out = None
    if outs:
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).transpose(1, 2).reshape(rows, num_pixels, channels)
    return maps / heads, out


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per map over its pixels, as the official code (with its epsilon)."""
    low = maps.amin(dim=-1, keepdim=True)
    high = maps.amax(dim=-1, keepdim=True)
    return (maps - low) / (high - low + MINMAX_EPS)


def pseudo_routes(mean_maps: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """[P, S, N] 0/1 routes from the running-mean phrase maps."""
    return (minmax_normalise(mean_maps) > mask_threshold).to(torch.float32)


@dataclass
class PhraseMapHistory:
    """Running mean of one layer's phrase maps over sampling steps.

    Several model evaluations within one step (Heun-type samplers, or the same rows arriving
    twice) are averaged into that step's map, so the mean counts steps, not calls.
    """

    completed_sum: torch.Tensor | None = None
    completed_steps: int = 0
    step: int | None = None
    step_sum: torch.Tensor | None = None
    step_calls: int = 0
    _shape: tuple = field(default=(), repr=False)

    def update(self, step: int, maps: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Add this call's maps; return the running mean and the number of steps it covers."""
        if maps.shape != self._shape:
            self.__init__()
            self._shape = maps.shape
        if step != self.step:
            if self.step_sum is not None:
                step_mean = self.step_sum / self.step_calls
                self.completed_sum = step_mean if self.completed_sum is None else self.completed_sum + step_mean
                self.completed_steps += 1
            self.step, self.step_sum, self.step_calls = step, maps, 1
        else:
            self.step_sum = self.step_sum + maps
            self.step_calls += 1
        current = self.step_sum / self.step_calls
        total = current if self.completed_sum is None else self.completed_sum + current
        steps = self.completed_steps + 1
        return total / steps, steps
