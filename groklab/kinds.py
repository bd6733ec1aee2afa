"""What the server does for an experiment kind beyond planning it (engine/kinds/ plans every kind):
extra sections of the experiment's analysis, and work to do when its runs finish. Most kinds need
neither; a kind that does registers its hooks here by name, and the analysis route and the worker's
finish path look them up instead of naming kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from groklab.analysis import RunRecord, Thresholds
from groklab.settings import Settings
from groklab.store.models import Experiment

AnalysisSection = Callable[[Experiment, Sequence[RunRecord], Thresholds], dict[str, Any]]
"""(experiment, its runs' records, the request's thresholds) -> sections merged into the
experiment's analysis: {name: a model}, typed by its field of groklab.analysis_models.ExperimentAnalysis
(a section with no field there passes through as plain JSON)."""
OnRunsFinished = Callable[[Session, Celery, Settings, int], list[int]]
"""(session, celery, settings, experiment id) -> ids of runs it queued (e.g. a search's next round)."""


@dataclass(frozen=True)
class ServerHooks:
    analysis: AnalysisSection | None = None
    on_runs_finished: OnRunsFinished | None = None


_HOOKS: dict[str, ServerHooks] = {}


def register_hooks(kind: str, hooks: ServerHooks) -> None:
    _HOOKS[kind] = hooks


def unregister_hooks(kind: str) -> None:
    _HOOKS.pop(kind, None)


def analysis_sections(experiment: Experiment, records: Sequence[RunRecord], thresholds: Thresholds) -> dict[str, Any]:
    hooks = _HOOKS.get(experiment.kind)
    return {} if hooks is None or hooks.analysis is None else hooks.analysis(experiment, records, thresholds)


def runs_finished(session: Session, celery: Celery, settings: Settings, experiment: Experiment) -> list[int]:
    hooks = _HOOKS.get(experiment.kind)
    if hooks is None or hooks.on_runs_finished is None:
        return []
    return hooks.on_runs_finished(session, celery, settings, experiment.id)


def _register_builtin() -> None:
    from groklab import method_comparison, search_rounds

    register_hooks(
        "d_crit_search", ServerHooks(analysis=search_rounds.analysis_section, on_runs_finished=search_rounds.advance_search)
    )
    register_hooks("method_comparison", ServerHooks(analysis=method_comparison.analysis_section))


_register_builtin()
