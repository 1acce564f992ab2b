"""Which LAMIC mask a step uses.

Official (``FluxLamicPipeline.__call__``): step i is stage 1 iff i < int(first_stage_ratio * steps),
a float product truncated (0.05 x 20 -> 1, 0.29 x 100 -> 28); every later step uses the stage-2
mask whatever ``second_stage_ratio`` says, so that ratio has no effect and is not an input here.

Inside ComfyUI the step comes from the sigma the model is called with and the run's
``sample_sigmas`` (both in ``transformer_options``). A sigma between two schedule entries (samplers
that evaluate inside a step) belongs to the step it falls in.

``denoise < 1`` (img2img, a hires-fix second pass): ComfyUI's ``sample_sigmas`` are then the tail
of a longer schedule. LAMIC has no such case; the rule here counts the steps of the run itself, so
a partial run also starts with its own int(ratio * steps) stage-1 steps (the layout is imposed again
at the start of every pass, exactly as a full run of that many steps would).
"""

from __future__ import annotations

import torch

SIGMA_TOLERANCE = 1e-5  # relative; sigmas reach the model as the schedule's own float32 values


def first_stage_steps(first_stage_ratio: float, steps: int) -> int:
    """How many leading steps use the stage-1 mask: int(ratio * steps)."""
    return int(first_stage_ratio * steps)


def stage_of_step(step: int, steps: int, first_stage_ratio: float) -> int:
    """1 or 2 for the 0-based ``step`` of ``steps``."""
    return 1 if step < first_stage_steps(first_stage_ratio, steps) else 2


def stage_of_sigma(sigma: float | torch.Tensor, sample_sigmas: torch.Tensor, first_stage_ratio: float) -> int:
    """1 or 2 for a model call at ``sigma`` in a run over ``sample_sigmas`` (steps + 1 values, decreasing)."""
    schedule = torch.as_tensor(sample_sigmas, dtype=torch.float64).flatten()
    steps = schedule.numel() - 1
    if steps < 1:
        raise ValueError("sample_sigmas must hold at least two values")
    value = float(torch.as_tensor(sigma, dtype=torch.float64).max())
    step = int((schedule[:-1] >= value * (1 - SIGMA_TOLERANCE)).sum()) - 1
    return stage_of_step(min(max(step, 0), steps - 1), steps, first_stage_ratio)
