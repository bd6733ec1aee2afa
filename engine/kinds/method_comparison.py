"""method_comparison: a grokking method against a baseline, each tuned over the same grid.

Published speed-ups of grokking methods are often measured against a baseline left at its
default learning rate and weight decay; against a tuned baseline they can shrink. This kind trains
both sides (a `method` and a `baseline`, each a spec overlay deep-merged over the base spec) at
every learning rate x weight decay of a grid and every seed, so the analysis
(groklab/method_comparison.py) can report the speed-up of each side's best configuration beside
the untuned one, at the base spec's own learning rate and weight decay, which the grid must hold.

Seed s trains both sides on the same data split and the same initialisation stream, so seeds pair
across sides and configurations.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from engine.kinds import grokking
from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, Seeds, check_cap, deep_merge, run_spec, seeded
from engine.spec import RunSpec, SpecError, StrictModel

DEFAULTS: dict[str, Any] = grokking.DEFAULTS
"""The paper's grokking run (P=113, 30% of pairs, 20,000 steps); `base` is merged over it."""
SIDES = ("baseline", "method")
"""The runs' roles, in planning order."""
MAX_GRID_VALUES = 8
"""At most this many learning rates and this many weight decays: a grid of 64 per side."""
SHARED_FIELDS = ("seed", "task", "phases", "eval_every", "eval_schedule", "stop_when")
"""Fields an overlay may not change: both sides train on one task with one budget and one
evaluation cadence, so their steps to generalise compare (the seed comes from `seeds`)."""
GRID_FIELDS = ("lr", "weight_decay")
"""optimizer fields the grid sets on every run (an overlay's value would be overwritten)."""

LearningRates = Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1, max_length=MAX_GRID_VALUES)]
GridWeightDecays = Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(min_length=1, max_length=MAX_GRID_VALUES)]


class ComparisonGrid(StrictModel):
    """The learning rates and weight decays each side is trained at (their product)."""

    learning_rate: LearningRates = Field(description="optimizer.lr values; must include the base spec's own.")
    weight_decay: GridWeightDecays = Field(description="optimizer.weight_decay values; must include the base spec's own.")


class MethodComparisonExperiment(KindRequest):
    """A method (a spec overlay) against a baseline (default: the base spec's plain AdamW), each
    trained over the same learning-rate x weight-decay grid and seeds."""

    kind: Literal["method_comparison"]
    method: dict[str, Any] = Field(
        description="RunSpec fields deep-merged over the base spec for the method's runs, e.g. "
        '{"optimizer": {"betas": [0.9, 0.99]}}. It may not set task, phases, seed, the evaluation '
        "cadence or stop_when (the sides share them), nor optimizer.lr or optimizer.weight_decay (the grid sets them)."
    )
    baseline: dict[str, Any] = Field({}, description="The baseline's overlay, as `method`; default none (the base spec).")
    grid: ComparisonGrid | None = Field(
        None, description="Learning rates x weight decays trained on each side; default only the base spec's own (untuned)."
    )
    seeds: Seeds = [0, 1, 2]


def untuned_point(request: MethodComparisonExperiment) -> tuple[float, float]:
    """The base spec's own (learning rate, weight decay): where the untuned comparison is read."""
    base = run_spec(DEFAULTS, request.base)
    return base.optimizer.lr, base.optimizer.weight_decay


def grid_points(request: MethodComparisonExperiment) -> tuple[list[float], list[float]]:
    """The grid's learning rates and weight decays; refuses a grid without the untuned point."""
    lr, wd = untuned_point(request)
    if request.grid is None:
        return [lr], [wd]
    axes = (("learning_rate", request.grid.learning_rate, lr), ("weight_decay", request.grid.weight_decay, wd))
    for field, values, own in axes:
        if len(set(values)) != len(values):
            raise SpecError(f"grid.{field}", f"repeated values in {values}")
        if not any(math.isclose(value, own, rel_tol=1e-9) for value in values):
            raise SpecError(
                f"grid.{field}", f"must include the base spec's own value {own:g}, where the untuned speed-up is read"
            )
    return request.grid.learning_rate, request.grid.weight_decay


def check_overlay(side: str, overlay: dict[str, Any], base: RunSpec) -> None:
    """An overlay valid over the base spec (errors name the field under `side`), touching none of
    the shared or grid fields."""
    for field in SHARED_FIELDS:
        if field in overlay:
            raise SpecError(f"{side}.{field}", "both sides share it: set it in base")
    optimizer = overlay.get("optimizer")
    if isinstance(optimizer, dict):
        for field in GRID_FIELDS:
            if field in optimizer:
                raise SpecError(f"{side}.optimizer.{field}", "the grid sets it on every run")
    try:
        RunSpec.model_validate(deep_merge(base.model_dump(mode="json"), overlay))
    except ValidationError as exc:
        raise SpecError.of(exc, under=side) from exc


def plan(request: MethodComparisonExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    """Side by side, learning rate by learning rate, weight decay by weight decay, seed by seed."""
    base = run_spec(DEFAULTS, request.base)  # the base's own errors name base.*
    if any(phase.weight_decay is not None for phase in base.phases):
        raise SpecError("base.phases", "a phase's own weight_decay would override the grid's: leave it unset")
    learning_rates, weight_decays = grid_points(request)
    overlays = {"baseline": request.baseline, "method": request.method}
    for side, overlay in overlays.items():
        check_overlay(side, overlay, base)
    check_cap(len(SIDES) * len(learning_rates) * len(weight_decays) * len(request.seeds), max_runs, "grid")
    seed_changes = seeded(request, request.seeds)
    runs = []
    for side in SIDES:
        for lr in learning_rates:
            for wd in weight_decays:
                point = {"optimizer": {"lr": lr, "weight_decay": wd}}
                for seed_change in seed_changes:
                    spec = run_spec(DEFAULTS, request.base, overlays[side], point, seed_change)
                    runs.append(PlannedRun(spec=spec, role=side))
    return runs


KIND = ExperimentKind("method_comparison", MethodComparisonExperiment, plan)
