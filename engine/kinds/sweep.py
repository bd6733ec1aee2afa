"""The generic kind: one spec expanded over seeds and a grid/zip sweep (no `kind` tag needed)."""

from __future__ import annotations

from typing import Literal

from engine.kinds.base import ExperimentKind, PlannedRun
from engine.spec import ExperimentSpec, RunSpec


class SweepExperiment(ExperimentSpec):
    """The generic form: one spec, expanded over seeds and a grid/zip sweep."""

    kind: Literal["sweep"] = "sweep"


def plan(request: SweepExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    # ExperimentSpec.expand copies every field but its own into the run specs, so the sweep
    # expands without the 'kind' tag it does not know.
    plain = ExperimentSpec.model_validate(request.model_dump(exclude={"kind"}))
    return [PlannedRun(spec=spec) for spec in plain.expand(max_runs=max_runs)]


KIND = ExperimentKind("sweep", SweepExperiment, plan)
