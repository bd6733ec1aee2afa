"""The Section 3 toy model (two lookup-table circuits, engine/toy.py) and its ablations, one run each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, check_cap, run_spec
from engine.spec import RunSpec, SpecError

ToyAblation = Literal["full", "gen_less_efficient", "no_speed_difference", "no_weight_decay"]

ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "gen_less_efficient": {"model": {"gen_norm_factor": 3.0}},
    "no_speed_difference": {"model": {"gen_init": [0.0, 1.0]}},
    "no_weight_decay": {"optimizer": {"weight_decay": 0.0}},
}
"""What each ablation changes: a less efficient C_gen never wins, equal learning speeds remove the
delay, no weight decay never undoes memorisation."""
DEFAULTS: dict[str, Any] = {
    "model": {"kind": "toy_circuits"},
    "optimizer": {"kind": "sgd", "lr": 0.01, "weight_decay": 0.005, "warmup_steps": 0},
    "phases": [{"steps": 20_000}],
    "eval_every": 10,
}


class ToyExperiment(KindRequest):
    """The Section 3 toy model (two lookup-table circuits) and its ablations, one run each."""

    kind: Literal["toy"]
    ablations: Annotated[list[ToyAblation], Field(min_length=1, max_length=4)] = list(ABLATIONS)


def plan(request: ToyExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    if len(set(request.ablations)) != len(request.ablations):
        raise SpecError("ablations", "each ablation may appear once")
    check_cap(len(request.ablations), max_runs, "ablations")
    return [PlannedRun(spec=run_spec(DEFAULTS, request.base, ABLATIONS[name]), role=name) for name in request.ablations]


KIND = ExperimentKind("toy", ToyExperiment, plan)
