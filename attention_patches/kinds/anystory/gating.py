"""Which AnyStory streams run at a sampling step: the official rule, by step index.

A window [start_at, end_at) of fractions becomes steps [int(n·start + 0.5), int(n·end + 0.5))
(round half up). The router runs whenever redux or ref runs (and is enabled); the reference
keys/values are cached from the first ref step on, as the official ``generate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass


def boundary(steps: int, at: float) -> int:
    return int(steps * at + 0.5)


@dataclass(frozen=True)
class Gating:
    redux_start: float = 0.1
    redux_end: float = 0.3
    ref_start: float = 0.0
    ref_end: float = 1.0
    router: bool = True

    def redux_steps(self, steps: int) -> tuple[int, int]:
        return boundary(steps, self.redux_start), boundary(steps, self.redux_end)

    def ref_steps(self, steps: int) -> tuple[int, int]:
        return boundary(steps, self.ref_start), boundary(steps, self.ref_end)

    def at(self, step: int, steps: int) -> StepStreams:
        redux_from, redux_to = self.redux_steps(steps)
        ref_from, ref_to = self.ref_steps(steps)
        redux = redux_from <= step < redux_to
        ref = ref_from <= step < ref_to
        return StepStreams(redux, ref, self.router and (redux or ref))


@dataclass(frozen=True)
class StepStreams:
    redux: bool
    ref: bool
    router: bool

    @property
    def any(self) -> bool:
        return self.redux or self.ref or self.router
