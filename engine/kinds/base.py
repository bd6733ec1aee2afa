"""What every experiment kind shares: the planned run, the request's common fields, and the steps
from a kind's defaults and a request's `base` to validated run specs.

A kind (engine/kinds/<name>.py) owns its request model, its defaults and its `plan`; this module
is the toolkit they plan with. Every kind starts from the paper's setup (docs/paper.md); `base`
holds RunSpec fields deep-merged over the kind's defaults, so any of them (task, model, optimizer,
phases, eval_every...) can change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.spec import PhaseSpec, RunSpec, SpecError, StrictModel

Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1000)]
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=1000)]
WeightDecays = Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(min_length=1, max_length=100)]
Name = Annotated[str, Field(min_length=1, max_length=200)] | None


class PlannedRun(BaseModel):
    """One run to create; a fork continues from its parent's final state."""

    model_config = ConfigDict(frozen=True)

    spec: RunSpec
    role: str = "run"
    search_round: int | None = Field(None, description="A d_crit_search probe's round (1, 2, ...).")
    parent_index: int | None = Field(
        None, description="Index, in the planned list, of the run whose final state this one continues."
    )
    parent_run_id: int | None = Field(None, description="An existing run of this server whose final state this one continues.")


class KindRequest(StrictModel):
    """The fields every kind but the generic sweep has."""

    name: Name = None
    base: dict[str, Any] = Field({}, description="RunSpec fields deep-merged over this kind's defaults (e.g. task.p, phases).")
    data_seeds: Seeds | None = Field(
        None,
        description="The data seed (training split, subsets, label noise) of each of `seeds`, in "
        "order; by default each run's data seed is its seed, unless base sets task.data_seed.",
    )


Planner = Callable[[Any, int, RunSpec | None], list[PlannedRun]]
"""plan(request, max_runs, phase1_spec): every run of the experiment in creation order (a parent
before its children). phase1_spec is the spec of an existing run the request continues, read by
the service from its store (ungrokking's phase1_run_id); None for every other kind."""


@dataclass(frozen=True)
class ExperimentKind:
    """A kind of experiment, as the registry (engine/kinds/__init__.py) knows it."""

    name: str
    request: type[BaseModel]
    plan: Planner


def geometric_sizes(low: int, high: int, count: int) -> list[int]:
    """`count` integers spaced geometrically from low to high, both ends included."""
    if count == 1:
        return [low]
    return [round(low * (high / low) ** (i / (count - 1))) for i in range(count)]


def even_sizes(low: int, high: int, count: int) -> list[int]:
    """`count` integers spaced evenly from low to high, both ends included."""
    if count == 1:
        return [low]
    return [round(low + (high - low) * i / (count - 1)) for i in range(count)]


def deep_merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `defaults`; nested dicts merge, everything else (lists too) replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_spec(defaults: dict[str, Any], base: dict[str, Any], *changes: dict[str, Any]) -> RunSpec:
    """The validated spec of defaults <- base <- changes; errors name the field under `base`."""
    if "seed" in base:
        raise SpecError("base.seed", "set the seeds with the experiment's 'seeds' list")
    if "eval_schedule" in base and "eval_every" not in base:
        # The two are one choice: a base that asks for a schedule replaces the kind's default
        # cadence rather than contradicting it.
        defaults = {key: value for key, value in defaults.items() if key != "eval_every"}
    data = deep_merge(defaults, base)
    for change in changes:
        data = deep_merge(data, change)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError.of(exc, under="base") from exc


def seeded(request: KindRequest, seeds: list[int]) -> list[dict[str, Any]]:
    """The spec change of each seed: its model seed and, so that the seeds' spread covers the
    data as well as the initialisation, its data seed (the seed itself unless the request fixes
    base.task.data_seed or gives data_seeds)."""
    if request.data_seeds is not None:
        if len(request.data_seeds) != len(seeds):
            raise SpecError("data_seeds", f"give one data seed per seed ({len(seeds)}), not {len(request.data_seeds)}")
        return [{"seed": seed, "task": {"data_seed": data}} for seed, data in zip(seeds, request.data_seeds)]
    if "data_seed" in request.base.get("task", {}):
        return [{"seed": seed} for seed in seeds]
    return [{"seed": seed, "task": {"data_seed": seed}} for seed in seeds]


def check_cap(count: int, max_runs: int, field: str) -> None:
    if count > max_runs:
        raise SpecError(field, f"the experiment plans {count} runs, over the limit of {max_runs}")


def phase_two(
    parent: RunSpec, steps: int, subset_size: int, weight_decay: float | None, *, reset_optimizer: bool = False
) -> RunSpec:
    """The parent's spec with a phase on a subset D' appended: a fork that continues its final state."""
    phase = PhaseSpec(
        steps=steps, train_set="subset", subset_size=subset_size, weight_decay=weight_decay,
        reset_optimizer=reset_optimizer,
    )  # fmt: skip
    return RunSpec.model_validate(parent.model_copy(update={"phases": [*parent.phases, phase]}).model_dump())
