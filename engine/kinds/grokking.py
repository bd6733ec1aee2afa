"""Grokking (Fig. 1): train from scratch on D, memorise first, generalise much later."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, Seeds, Sizes, WeightDecays, check_cap, run_spec, seeded
from engine.spec import RunSpec

DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113, "train_fraction": 0.3},  # D = 3,830 at P = 113
    "phases": [{"steps": 20_000}],
    "eval_every": 50,
}
"""RunSpec fields of the paper's grokking run; a request's `base` is merged over them."""


class GrokkingExperiment(KindRequest):
    """Train from scratch on D (default P=113, D=3,830, wd 1): memorise, then generalise late."""

    kind: Literal["grokking"]
    seeds: Seeds = [0]
    train_sizes: Sizes | None = Field(None, description="Several D; default the base's task size.")
    weight_decays: WeightDecays | None = Field(None, description="Several weight decays.")


def plan(request: GrokkingExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    sizes: list[int | None] = list(request.train_sizes or [None])
    decays: list[float | None] = list(request.weight_decays or [None])
    check_cap(len(sizes) * len(decays) * len(request.seeds), max_runs, "seeds")
    runs = []
    for size in sizes:
        for decay in decays:
            change: dict[str, Any] = {}
            if size is not None:
                change["task"] = {"train_size": size}
            if decay is not None:
                change["optimizer"] = {"weight_decay": decay}
            for seed_change in seeded(request, request.seeds):
                runs.append(PlannedRun(spec=run_spec(DEFAULTS, request.base, change, seed_change)))
    return runs


KIND = ExperimentKind("grokking", GrokkingExperiment, plan)
