"""/v1/experiments: submit a spec (expanded into runs and queued), list and read experiments."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter

from celery import Celery
from fastapi import APIRouter, Depends, Header, Query, Response
from sqlalchemy.orm import Session

from api.auth import Principal, reader, writer
from api.deps import get_celery, get_session
from api.problems import Problem
from api.schemas import ExperimentDetailOut, ExperimentOut, ExperimentPage, RunOut
from engine.spec import ExperimentSpec
from groklab.errors import ServiceUnavailable
from groklab.queue import enqueue_run
from groklab.settings import Settings, get_settings
from groklab.store import idempotency, quotas
from groklab.store import runs as run_store
from groklab.store.models import Experiment

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
log = logging.getLogger(__name__)


def experiment_out(experiment: Experiment) -> ExperimentOut:
    return ExperimentOut(
        id=experiment.id,
        name=experiment.name,
        created_at=experiment.created_at,
        run_ids=[run.id for run in experiment.runs],
        status_counts=dict(Counter(run.status for run in experiment.runs)),
        spec=experiment.spec,
    )


@router.post(
    "",
    status_code=201,
    response_model=ExperimentOut,
    responses={503: {"model": Problem, "description": "Stored, but the broker is unreachable."}},
)
def submit_experiment(
    spec: ExperimentSpec,
    response: Response,
    idempotency_key: str | None = Header(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body returns the first answer's experiment "
        "instead of a new one; the same key with another body is a 409.",
    ),
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
    celery: Celery = Depends(get_celery),
    settings: Settings = Depends(get_settings),
) -> ExperimentOut:
    """Store the experiment with one run per sweep point and seed, then queue every run."""
    run_specs = spec.expand(max_runs=settings.max_runs_per_experiment)
    spec_json = spec.model_dump(mode="json")
    owner = principal.owner
    quotas.lock_owner_submissions(session, owner)
    if idempotency_key is not None:
        # The validated spec, not the raw bytes: a retry that re-serialises the body still matches.
        request_hash = hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode()).hexdigest()
        replayed = idempotency.find_replay(
            session, owner=owner, key=idempotency_key, request_hash=request_hash
        )
        if replayed is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return experiment_out(replayed)
    total_steps = [run.total_steps for run in run_specs]
    quotas.check_submission_rate(session, owner, per_minute=settings.submissions_per_minute)
    quotas.check_queued_work(
        session, owner, new_steps=sum(total_steps), limit=settings.max_queued_steps_per_owner
    )
    experiment = run_store.create_experiment(
        session,
        name=spec.name,
        spec=spec_json,
        run_specs=[run.model_dump(mode="json") for run in run_specs],
        total_steps=total_steps,
        owner=owner,
    )
    if idempotency_key is not None:
        idempotency.remember(
            session, owner=owner, key=idempotency_key, request_hash=request_hash, experiment_id=experiment.id
        )
    # Commit before queueing: a worker that picks a run up must find it in the database.
    session.commit()
    run_ids = [run.id for run in experiment.runs]
    try:
        for run_id in run_ids:
            enqueue_run(celery, run_id)
    except Exception as exc:
        log.exception("could not queue experiment %s", experiment.id)
        run_store.fail_queued_runs(session, run_ids, error=f"could not reach the broker: {exc}")
        session.commit()
        raise ServiceUnavailable(
            f"experiment {experiment.id} was stored but the broker is unreachable; its runs "
            "are marked failed"
        ) from exc
    return experiment_out(experiment)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    limit: int = Query(50, ge=1, le=500),
    cursor: int | None = Query(None, ge=1, le=run_store.MAX_ID, description="next_cursor of the previous page"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> ExperimentPage:
    experiments = run_store.list_experiments(
        session, limit=limit, before_id=cursor, owner=principal.owner
    )
    next_cursor = str(experiments[-1].id) if len(experiments) == limit else None
    return ExperimentPage(items=[experiment_out(e) for e in experiments], next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentDetailOut)
def get_experiment(
    experiment_id: int,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> ExperimentDetailOut:
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    return ExperimentDetailOut(
        **experiment_out(experiment).model_dump(),
        runs=[RunOut.from_row(run) for run in experiment.runs],
    )
