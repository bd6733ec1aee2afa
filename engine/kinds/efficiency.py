"""Circuit efficiency (Fig. 4): each circuit's parameter norm alone, C_mem from random labels and
C_gen from sizes large enough to generalise, over weight decays."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, Seeds, Sizes, WeightDecays, check_cap, run_spec, seeded
from engine.spec import RunSpec

DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113},
    "phases": [{"steps": 20_000}],
    "eval_every": 50,
}


class EfficiencyExperiment(KindRequest):
    """Parameter norm of each circuit alone: random labels (C_mem) and large D (C_gen)."""

    kind: Literal["efficiency"]
    seeds: Seeds = [0]
    memorise_sizes: Sizes = Field([250, 500, 1000, 2000], description="D for the random-label (memorisation-only) runs.")
    generalise_sizes: Sizes = Field([3830, 5000, 6384], description="D for the generalising runs (large enough to generalise).")
    weight_decays: WeightDecays = [0.3, 1.0, 3.0]


def plan(request: EfficiencyExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    per_setting = len(request.weight_decays) * len(request.seeds)
    check_cap((len(request.memorise_sizes) + len(request.generalise_sizes)) * per_setting, max_runs, "memorise_sizes")
    groups = [("memorise", True, request.memorise_sizes), ("generalise", False, request.generalise_sizes)]
    runs = []
    for role, random_labels, sizes in groups:
        for size in sizes:
            for decay in request.weight_decays:
                for seed_change in seeded(request, request.seeds):
                    change = {"task": {"train_size": size, "random_labels": random_labels}, "optimizer": {"weight_decay": decay}}
                    runs.append(PlannedRun(spec=run_spec(DEFAULTS, request.base, change, seed_change), role=role))
    return runs


KIND = ExperimentKind("efficiency", EfficiencyExperiment, plan)
