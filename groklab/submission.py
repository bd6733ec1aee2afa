"""Submitting an experiment: plan its runs, apply the owner's limits, store them, queue them.

Runs that continue another run's final state (ungrokking's phase 2) are stored as queued but
sent to the broker only when their parent succeeds (groklab.forks hands them on then).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from celery import Celery
from pydantic import BaseModel
from sqlalchemy.orm import Session

from engine.experiments import PlannedRun, UngrokkingExperiment, plan_experiment
from engine.spec import ExperimentSpec, RunSpec
from groklab import storage
from groklab.dispatch import dispatch_runs
from groklab.errors import Conflict, NotFound
from groklab.run_specs import run_spec
from groklab.settings import Settings
from groklab.store import idempotency, quotas
from groklab.store import runs as run_store
from groklab.store.models import Experiment


@dataclass(frozen=True)
class Submission:
    experiment: Experiment
    replayed: bool
    """True when an Idempotency-Key retry returned the experiment of the first request."""


def submit_experiment(
    session: Session,
    celery: Celery,
    settings: Settings,
    request: BaseModel,
    *,
    owner: str,
    idempotency_key: str | None,
) -> Submission:
    planned = _planned_runs(session, settings, request, owner)
    spec_json = request.model_dump(mode="json")
    quotas.lock_owner_submissions(session, owner)
    request_hash = None
    if idempotency_key is not None:
        # The validated spec, not the raw bytes: a retry that re-serialises the body still matches.
        request_hash = hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode()).hexdigest()
        replayed = idempotency.find_replay(
            session, owner=owner, key=idempotency_key, request_hash=request_hash,
            lifetime=timedelta(hours=settings.idempotency_key_hours),
        )  # fmt: skip
        if replayed is not None:
            return Submission(replayed, replayed=True)
    check_limits(session, settings, owner, planned, under=_spec_prefix(request))
    experiment = run_store.create_experiment(
        session,
        name=getattr(request, "name", None),
        kind=getattr(request, "kind", "sweep"),
        spec=spec_json,
        runs=[stored_run(run) for run in planned],
        owner=owner,
    )
    if idempotency_key is not None and request_hash is not None:
        idempotency.remember(session, owner=owner, key=idempotency_key, request_hash=request_hash, experiment_id=experiment.id)
    ready = [run.id for run, plan in zip(experiment.runs, planned, strict=True) if plan.parent_index is None]
    dispatch_runs(session, celery, ready, ensemble_size=settings.ensemble_size)
    return Submission(experiment, replayed=False)


@dataclass(frozen=True)
class Plan:
    runs: list[PlannedRun]
    total_steps: int


def plan_submission(session: Session, settings: Settings, request: BaseModel, *, owner: str) -> Plan:
    """What submitting `request` would store, with the same validation and limits, storing nothing:
    the dry run a client makes before it submits a batch of experiments."""
    planned = _planned_runs(session, settings, request, owner)
    check_limits(session, settings, owner, planned, under=_spec_prefix(request))
    return Plan(planned, sum(run.spec.total_steps for run in planned))


def check_limits(session: Session, settings: Settings, owner: str, planned: list[PlannedRun], *, under: str = "") -> None:
    """The per-run storage bounds, the owner's submission rate, queued-work and storage bounds,
    as a submission of `planned` meets them. `under` prefixes the spec fields named (a kind's
    "base.")."""
    new_bytes = 0
    for index, run in enumerate(planned):
        new_bytes += storage.check_run_bounds(
            run.spec, settings, under=under, run="the run" if len(planned) == 1 else f"run {index}"
        ).bytes
    total_steps = sum(run.spec.total_steps for run in planned)
    quotas.check_submission_rate(session, owner, per_minute=settings.submissions_per_minute)
    quotas.check_queued_work(session, owner, new_steps=total_steps, limit=settings.max_queued_steps_per_owner)
    quotas.check_stored_bytes(session, owner, new_bytes=new_bytes, limit=settings.max_stored_bytes_per_owner)


def stored_run(planned: PlannedRun) -> run_store.NewRun:
    """The row a planned run is stored as (by submission, and by a d_crit_search's later rounds)."""
    footprint = storage.footprint(planned.spec)
    return run_store.NewRun(
        spec=planned.spec.model_dump(mode="json"),
        total_steps=planned.spec.total_steps,
        planned_points=footprint.metric_points,
        planned_checkpoint_bytes=footprint.checkpoint_bytes,
        role=planned.role,
        parent_index=planned.parent_index,
        parent_run_id=planned.parent_run_id,
        search_round=planned.search_round,
    )


def _spec_prefix(request: BaseModel) -> str:
    """Where a request holds the run spec's fields: at its top (a sweep) or under `base` (a kind)."""
    return "" if isinstance(request, ExperimentSpec) else "base."


def _planned_runs(session: Session, settings: Settings, request: BaseModel, owner: str) -> list[PlannedRun]:
    return plan_experiment(request, settings.max_runs_per_experiment, phase1_spec=_phase1_spec(session, request, owner))


def _phase1_spec(session: Session, request: BaseModel, owner: str) -> RunSpec | None:
    """The spec of the finished run an ungrokking request continues, if it names one."""
    if not isinstance(request, UngrokkingExperiment) or request.phase1_run_id is None:
        return None
    try:
        run = run_store.get_run(session, request.phase1_run_id, owner=owner)
    except NotFound as exc:
        raise NotFound(f"run {request.phase1_run_id} does not exist", field="phase1_run_id") from exc
    if run.status != run_store.SUCCEEDED:
        raise Conflict(f"run {run.id} is {run.status}; ungrokking continues a succeeded run", field="phase1_run_id")
    return run_spec(run)
