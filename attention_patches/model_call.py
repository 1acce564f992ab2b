"""What one model call is, for every attention layer: which batch rows are positive, where it sits in the run.

ComfyUI batches the positive and negative (unconditional) chunks of a call in
``transformer_options["cond_or_uncond"]`` order and gives the call's ``sigmas`` and the run's
``sample_sigmas``; a method's window and step come from those, never from a counter of calls.
"""

from __future__ import annotations

import torch

POSITIVE = 0
NEGATIVE = 1
SIGMA_TOLERANCE = 1e-4


def chunk_rows(cond_or_uncond: list[int], batch: int, kind: int = POSITIVE) -> slice | torch.Tensor | None:
    """Rows of the chunks of ``kind`` (positive or negative): a slice when contiguous, else an index tensor."""
    chunk = batch // len(cond_or_uncond)
    chunks = [i for i, k in enumerate(cond_or_uncond) if k == kind]
    if not chunks:
        return None
    if chunks == list(range(chunks[0], chunks[-1] + 1)):
        return slice(chunks[0] * chunk, (chunks[-1] + 1) * chunk)
    return torch.tensor([row for i in chunks for row in range(i * chunk, (i + 1) * chunk)])


def positive_row_index(cond_or_uncond: list[int] | None, batch: int) -> torch.Tensor | None:
    """Indices of the positive rows; None when every row is positive (no negative chunk in this call)."""
    if not cond_or_uncond or NEGATIVE not in cond_or_uncond:
        return None
    rows = chunk_rows(cond_or_uncond, batch)
    if rows is None:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(batch)[rows] if isinstance(rows, slice) else rows


def sampling_step(extra_options: dict) -> int:
    """Index of the sampling step this model call belongs to, from the run's sigma schedule.

    A call at sigma s belongs to step i when sigmas[i] >= s > sigmas[i + 1]: split
    positive/negative calls share the step, a sampler's intermediate evaluation (DPM-2, SDE)
    stays in its step, and Heun's corrector at sigmas[i + 1] joins the evaluation of the same
    noise level, so a run of N steps counts N steps, whatever the number of model calls.
    """
    schedule, sigmas = extra_options.get("sample_sigmas"), extra_options.get("sigmas")
    if schedule is None or sigmas is None:
        return 0
    sigma = float(sigmas.max())
    levels = int((schedule[:-1] >= sigma * (1 - SIGMA_TOLERANCE)).sum())
    return max(levels - 1, 0)


def sampling_steps(extra_options: dict) -> int:
    """Steps of the run (at least 1), from its sigma schedule."""
    schedule = extra_options.get("sample_sigmas")
    return max(len(schedule) - 1, 1) if schedule is not None else 1


def within(window: tuple[float, float] | None, sigmas: torch.Tensor | None) -> bool:
    """Whether a call at ``sigmas`` lies in ``window`` = (start, end), end <= sigma <= start (sigmas decrease; None: always)."""
    if window is None or sigmas is None:
        return True
    start, end = window
    return end <= float(sigmas.max()) <= start


def sigma_window(model, start_percent: float, end_percent: float, always: bool = False) -> tuple[float, float] | None:
    """(start, end) sigmas of ``model``'s sampling between two percents; None for the whole run (unless ``always``).

    The caller checks start < end and names the fix on its own node.
    """
    if not always and start_percent <= 0.0 and end_percent >= 1.0:
        return None
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))
