"""RunSpec.stop_when over a run's evaluations (torch-free: the toy trainer uses it too)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.spec import StopCondition


class EarlyStop:
    """Which conditions hold, and since which evaluation step; `held_since` goes into the run's
    checkpoints, so a resumed run stops at the step an uninterrupted one would."""

    def __init__(self, conditions: Sequence[StopCondition], held_since: Sequence[int | None] = ()):
        self.conditions = list(conditions)
        self.held_since: list[int | None] = list(held_since) or [None] * len(self.conditions)

    def observe(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Takes one evaluation's metrics; True once any condition has held at every evaluation
        of the last for_steps steps (a non-finite or missing value breaks the streak)."""
        reached = False
        for i, condition in enumerate(self.conditions):
            value = metrics.get(condition.metric)
            if value is None or value != value or not condition.holds(value):
                self.held_since[i] = None
                continue
            since = self.held_since[i] = step if self.held_since[i] is None else self.held_since[i]
            reached = reached or step - since >= condition.for_steps
        return reached
