"""Semi-grokking (Section 5): long runs at sizes near D_crit, where generalisation may stop at a
partial test accuracy."""

from __future__ import annotations

from typing import Any, Literal

from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, Seeds, Sizes, check_cap, even_sizes, run_spec, seeded
from engine.spec import RunSpec

SIZES = even_sizes(1500, 2050, 20)
"""The paper's semi-grokking range of D."""
DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113},
    "phases": [{"steps": 100_000}],
    "eval_every": 200,
}


class SemiGrokkingExperiment(KindRequest):
    """Long runs at sizes near D_crit, where generalisation may stop at partial test accuracy."""

    kind: Literal["semi_grokking"]
    seeds: Seeds = list(range(10))
    train_sizes: Sizes = SIZES


def plan(request: SemiGrokkingExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    check_cap(len(request.train_sizes) * len(request.seeds), max_runs, "train_sizes")
    return [
        PlannedRun(spec=run_spec(DEFAULTS, request.base, {"task": {"train_size": size}}, seed_change))
        for size in request.train_sizes
        for seed_change in seeded(request, request.seeds)
    ]


KIND = ExperimentKind("semi_grokking", SemiGrokkingExperiment, plan)
