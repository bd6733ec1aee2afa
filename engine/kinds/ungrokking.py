"""Ungrokking (Fig. 7): grok on a large D once per seed (phase 1), then continue each on a smaller
D' (phase 2, a fork of phase 1's final state): below D_crit test accuracy falls back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from engine.kinds.base import (
    ExperimentKind, KindRequest, PlannedRun, Seeds, Sizes, WeightDecays, check_cap, geometric_sizes, phase_two,
    run_spec, seeded,
)  # fmt: skip
from engine.spec import RunSpec, SpecError

SUBSET_SIZES = geometric_sizes(390, 1494, 7)
"""The paper's Fig. 7 D' values."""
DEFAULTS: dict[str, Any] = {
    # Half the pairs generalises within ~1k steps at P=113; phase 1 leaves ample margin.
    "task": {"op": "add", "p": 113, "train_fraction": 0.5},
    "phases": [{"steps": 5_000}],
    "eval_every": 50,
}
"""RunSpec fields of phase 1; a request's `base` is merged over them."""


class UngrokkingExperiment(KindRequest):
    """Grok on a large D once per seed (phase 1), then continue on each smaller D' (phase 2)."""

    kind: Literal["ungrokking"]
    seeds: Seeds | None = Field(None, description="Default 0..9; with phase1_run_id at most one (that run's own seed is kept).")
    subset_sizes: Sizes = Field(SUBSET_SIZES, description="D' values; each must not exceed phase 1's D.")
    weight_decays: WeightDecays = Field([1.0], description="Phase-2 weight decays.")
    phase2_steps: Annotated[int, Field(ge=1, le=100_000_000)] = 10_000
    phase2_reset_optimizer: bool = False
    phase1_run_id: Annotated[int, Field(ge=1)] | None = Field(
        None, description="A finished run of this server to continue instead of training phase 1."
    )


def phase1_specs(request: KindRequest, seeds: list[int]) -> list[RunSpec]:
    """Each seed's phase-1 run (also the d_crit_search's ungrokking side)."""
    return [run_spec(DEFAULTS, request.base, seed_change) for seed_change in seeded(request, seeds)]


def plan(request: UngrokkingExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    external = request.phase1_run_id is not None
    if external and request.seeds is not None and len(request.seeds) > 1:
        raise SpecError("seeds", "an existing phase-1 run is one seed; give one seed or none")
    seeds = request.seeds or ([0] if external else list(range(10)))
    children_per_seed = len(request.subset_sizes) * len(request.weight_decays)
    parents = 0 if external else len(seeds)
    check_cap(parents + children_per_seed * len(seeds), max_runs, "subset_sizes")

    runs: list[PlannedRun] = []
    for own_phase1 in phase1_specs(request, seeds):
        parent_spec = phase1_spec if external and phase1_spec is not None else own_phase1
        too_big = [d for d in request.subset_sizes if d > parent_spec.final_train_size]
        if too_big:
            raise SpecError("subset_sizes", f"D' {too_big} larger than phase 1's training set of {parent_spec.final_train_size}")
        parent_index = None
        if not external:
            parent_index = len(runs)
            runs.append(PlannedRun(spec=parent_spec, role="phase1"))
        for size in request.subset_sizes:
            for decay in request.weight_decays:
                phase2 = phase_two(parent_spec, request.phase2_steps, size, decay, reset_optimizer=request.phase2_reset_optimizer)
                runs.append(
                    PlannedRun(spec=phase2, role="phase2", parent_index=parent_index, parent_run_id=request.phase1_run_id)
                )
    return runs


KIND = ExperimentKind("ungrokking", UngrokkingExperiment, plan)
