"""Where each reference's attention went: measured from the model's own joint attention.

For a target token t and reference i, the attention mass p(t, i) is the softmax weight t puts on
reference i's tokens, under the same class restriction the model runs with. The map of p(., i)
over the target grid shows where reference i was used; its share inside box i is the figure
Router Mask Preview prints and the bench reports. The measurement runs over chunks of queries
(no [S, S] tensor), on the blocks the caller picks.
"""

from __future__ import annotations

import torch

from .masked_attention import TokenClasses

SCORES_BUDGET = 256 * 2**20  # bytes of fp32 scores per chunk of queries: [B, H, chunk, S] stays bounded at real sizes


def reference_attention(q: torch.Tensor, k: torch.Tensor, classes: TokenClasses, target: tuple[int, int],
                        references: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[n, T] mean over batch rows and heads of the attention mass each target token puts on each reference.

    ``q``/``k``: [B, H, S, D] as the attention function receives them (RoPE applied).
    """
    table = classes.additive_table(torch.float32).to(q.device)
    ids = classes.class_ids.to(q.device)
    scale = q.shape[-1] ** -0.5
    batch, heads, length, _ = k.shape
    chunk = max(1, SCORES_BUDGET // (4 * batch * heads * length))
    out = []
    for start in range(target[0], target[1], chunk):
        stop = min(start + chunk, target[1])
        scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, start:stop].float(), k.float()) * scale
        key_bias = table[ids[start:stop]][:, ids]
        probs = torch.softmax(scores + key_bias, dim=-1).mean(dim=(0, 1))  # [chunk, S]
        out.append(torch.stack([probs[:, a:b].sum(-1) for a, b in references]))
    return torch.cat(out, dim=1)


def in_box_share(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """[n] share of each reference's mass (``maps`` [n, T] >= 0) inside its own region (``regions`` [n, T] bool or 0..1)."""
    total = maps.sum(-1).clamp_min(1e-12)
    return (maps * (regions.float() > 0.5)).sum(-1) / total


def shares_by_step_range(recorder, boxes: torch.Tensor, ranges: int = 3) -> list[tuple[int, int, torch.Tensor]]:
    """[(first step, last step, [n] in-box shares)] of the recorded per-step maps, in up to ``ranges`` step ranges.

    The maps of a range are averaged per grid size and judged against the boxes at that grid (a UNet
    records several resolutions); the range's shares are the mean over its grid sizes.
    """
    from ..routing import box_routes

    steps = recorder.steps
    size = max(1, -(-len(steps) // ranges))
    out = []
    for first in range(0, len(steps), size):
        chunk = steps[first:first + size]
        by_grid: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for step in chunk:
            for route in recorder.routes_at(step).values():  # [n, h, w]
                by_grid.setdefault(tuple(route.shape), []).append(route.float())
        if not by_grid:
            continue
        shares = []
        for (n, h, w), maps in by_grid.items():
            mean = torch.stack(maps).mean(0).reshape(n, -1)
            shares.append(in_box_share(mean, box_routes(boxes[:n], h, w)))
        out.append((chunk[0], chunk[-1], torch.stack(shares).mean(0)))
    return out
