"""The official delayed switch (text-only, then fused conditioning) mapped onto ComfyUI percents.

Officially (``pipeline.py``, ``inference.py``) the positive conditioning is the text-only one
while the UNet call index ``i <= switch`` and the fused one after, with
``switch = (1 - alpha) * steps`` (a Python float: alpha 0.9 at 50 steps gives 4.999...) or
``switch = start_merge_step``. The scheduler is SD1.5's PNDM (skip_prk_steps, "leading"
spacing, steps_offset 1), which makes steps + 1 calls because it evaluates its second
timestep twice.

ComfyUI's start percent p stands for the noise level of timestep ``(1 - p) * 999``. Every p
strictly between the last text-only and the first fused official timestep puts every official
timestep on the same side; the window's midpoint is the exact p. When the switch falls on the
repeated PNDM timestep the window is empty (one timestep, both conditionings) and the midpoint
is that timestep's own percent.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN_TIMESTEPS = 1000
STEPS_OFFSET = 1
DEMO_ALPHA = 0.75  # gradio demo default ("alpha_"); cog and pipeline.__call__ use 0.7
DEMO_STEPS = 50


def pndm_timesteps(steps: int) -> list[int]:
    """The timestep of every UNet call of SD1.5's PNDM with ``steps`` steps (steps + 1 calls)."""
    if steps < 2:
        raise ValueError(f"PNDM needs at least 2 steps, got {steps}")
    ratio = TRAIN_TIMESTEPS // steps
    leading = [i * ratio + STEPS_OFFSET for i in range(steps)]
    return list(reversed(leading[:-1] + leading[-2:-1] + leading[-1:]))


def alpha_switch(alpha: float, steps: int) -> float:
    """The official switch value of ``alpha_`` (float arithmetic kept on purpose)."""
    return (1 - alpha) * steps


@dataclass(frozen=True)
class Switch:
    """Where the official loop switches, and the ComfyUI start percents that reproduce it."""

    timesteps: tuple[int, ...]
    text_only_calls: int
    window: tuple[float, float]  # open interval of ComfyUI percents

    @property
    def last_text_only_timestep(self) -> int | None:
        return self.timesteps[self.text_only_calls - 1] if self.text_only_calls else None

    @property
    def first_fused_timestep(self) -> int | None:
        return self.timesteps[self.text_only_calls] if self.text_only_calls < len(self.timesteps) else None

    @property
    def percent(self) -> float:
        """The ComfyUI start percent of the fused conditioning: the window's midpoint."""
        return (self.window[0] + self.window[1]) / 2

    @property
    def exact(self) -> bool:
        """False when no percent reproduces the split (it falls on the repeated PNDM timestep)."""
        return self.window[0] < self.window[1]

    def schedule(self) -> list[tuple[int, int, str]]:
        """[(call, timestep, "text" | "augmented")] of the official loop."""
        return [(i, t, "text" if i < self.text_only_calls else "augmented") for i, t in enumerate(self.timesteps)]


def official_switch(switch_value: float, steps: int) -> Switch:
    """The split of the official loop for ``switch_value`` (calls with index <= it are text-only)."""
    timesteps = tuple(pndm_timesteps(steps))
    calls = sum(1 for i in range(len(timesteps)) if i <= switch_value)
    last = timesteps[calls - 1] if calls else TRAIN_TIMESTEPS - 1
    first = timesteps[calls] if calls < len(timesteps) else 0
    return Switch(timesteps, calls, (timestep_percent(last), timestep_percent(first)))


def timestep_percent(timestep: float) -> float:
    """ComfyUI's percent of a timestep (its percent p means timestep (1 - p) * 999)."""
    return 1.0 - timestep / (TRAIN_TIMESTEPS - 1)


DEMO_START_PERCENT = official_switch(alpha_switch(DEMO_ALPHA, DEMO_STEPS), DEMO_STEPS).percent
