"""Experiment kinds: each is one module of this package (its request model, defaults and `plan`),
registered here by name. Adding a kind is one module with a `KIND` and a line below (or a
`register` call from anywhere, as the tests do); `plan_experiment`, the request union the api
validates against and the server's per-kind hooks all go through this registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Discriminator, Tag

from engine.kinds.base import ExperimentKind, PlannedRun
from engine.spec import RunSpec

_KINDS: dict[str, ExperimentKind] = {}


def register(kind: ExperimentKind) -> ExperimentKind:
    """Adds (or replaces) a kind; returns it, so a module can write KIND = register(...)."""
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> dict[str, ExperimentKind]:
    """Every registered kind by name, in registration order."""
    return dict(_KINDS)


def kind_of(value: Any) -> str:
    """The kind a request (a dict or a model) names; no 'kind' means the generic sweep, the one
    form that needs no tag."""
    if isinstance(value, dict):
        return value.get("kind", "sweep")
    return getattr(value, "kind", "sweep")


def request_type() -> Any:
    """The discriminated union of every registered kind's request model (validation errors then
    name the field inside the kind that was asked for)."""
    members = tuple(Annotated[kind.request, Tag(name)] for name, kind in _KINDS.items())
    return Annotated[Union[members], Discriminator(kind_of)]  # noqa: UP007 (a runtime tuple of members)


def plan_experiment(request: BaseModel, max_runs: int, *, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    """Every run of the experiment in creation order (a parent before its children), by its kind's plan.

    `phase1_spec` is the spec of the run named by an ungrokking request's `phase1_run_id`; the
    service reads it from its store so the phase-2 children extend exactly what that run trained.
    """
    kind = _KINDS.get(kind_of(request))
    if kind is None or not isinstance(request, kind.request):
        raise TypeError(f"not an experiment request of a registered kind: {type(request).__name__}")
    return kind.plan(request, max_runs, phase1_spec)


from engine.kinds import d_crit_search, efficiency, grokking, method_comparison, semi_grokking, sweep, toy, ungrokking  # noqa: E402

for _module in (sweep, grokking, ungrokking, semi_grokking, efficiency, toy, d_crit_search, method_comparison):
    register(_module.KIND)
