"""/v1/experiments: submit a spec (expanded into runs and queued), list, read and delete experiments."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Header, HTTPException, Query, Response

from api.auth import ReaderDep, WriterDep
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.problems import problem_response
from api.query_params import apply_patch
from api.schemas import (
    ExperimentDetailOut,
    ExperimentOut,
    ExperimentPage,
    ExperimentPlanOut,
    OverlayQueryOut,
    RunOut,
    TagsPatch,
)
from engine.experiments import ExperimentRequest
from groklab import continuation, deletion
from groklab.overlay_query import Seeds, overlay_query
from groklab.settings import comma_list
from groklab.store import runs as run_store
from groklab.store.models import Experiment
from groklab.submission import plan_submission
from groklab.submission import submit_experiment as submit

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


def experiment_out(experiment: Experiment, runs: run_store.ExperimentRuns | None = None) -> ExperimentOut:
    """`runs` (run_store.experiment_runs) spares loading the runs."""
    if runs is None:
        runs = run_store.ExperimentRuns([run.id for run in experiment.runs], dict(Counter(run.status for run in experiment.runs)))
    return ExperimentOut(
        id=experiment.id,
        name=experiment.name,
        created_at=experiment.created_at,
        run_ids=runs.run_ids,
        status_counts=runs.status_counts,
        kind=experiment.kind,
        spec=experiment.spec,
        tags=experiment.tags or {},
        note=experiment.note,
    )


@router.post(
    "",
    status_code=201,
    response_model=ExperimentOut,
    responses={503: problem_response("Stored, but the broker is unreachable.")},
)
def submit_experiment(
    request: ExperimentRequest,
    response: Response,
    principal: WriterDep,
    session: SessionDep,
    celery: CeleryDep,
    settings: SettingsDep,
    idempotency_key: str | None = Header(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body returns the first answer's experiment "
        "instead of a new one; the same key with another body is a 409.",
    ),
) -> ExperimentOut:
    """Plan the experiment's runs (a sweep, or one of the paper's kinds), store and queue them."""
    submission = submit(session, celery, settings, request, owner=principal.owner, idempotency_key=idempotency_key)
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return experiment_out(submission.experiment)


@router.post("/plan", response_model=ExperimentPlanOut)
def plan_experiment(
    request: ExperimentRequest, principal: WriterDep, session: SessionDep, settings: SettingsDep
) -> ExperimentPlanOut:
    """A dry run of POST /v1/experiments: the same validation and limits (422, 429), nothing stored
    or queued. Clients check a batch of specs with it before submitting any of them."""
    plan = plan_submission(session, settings, request, owner=principal.owner)
    return ExperimentPlanOut(
        kind=getattr(request, "kind", "sweep"), name=getattr(request, "name", None),
        runs=len(plan.runs), total_steps=plan.total_steps,
    )  # fmt: skip


@router.api_route("/plan", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def plan_other_methods() -> None:
    """405 rather than the 422 of /{experiment_id} reading 'plan' as an id."""
    raise HTTPException(405, "POST a spec to /v1/experiments/plan", headers={"Allow": "POST"})


@router.get("", response_model=ExperimentPage)
def list_experiments(
    principal: ReaderDep,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=500),
    cursor: int | None = Query(None, ge=1, le=run_store.MAX_ID, description="next_cursor of the previous page"),
    tag: str | None = Query(
        None, max_length=2000, description="Comma-separated `key=value` (that value) or `key` (any value); all must hold."
    ),
) -> ExperimentPage:
    experiments = run_store.list_experiments(
        session, limit=limit, before_id=cursor, owner=principal.owner, tags=comma_list(tag) or []
    )
    next_cursor = str(experiments[-1].id) if len(experiments) == limit else None
    runs = run_store.experiment_runs(session, [e.id for e in experiments])
    return ExperimentPage(items=[experiment_out(e, runs[e.id]) for e in experiments], next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentDetailOut)
def get_experiment(experiment_id: int, principal: ReaderDep, session: SessionDep) -> ExperimentDetailOut:
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    return ExperimentDetailOut(
        **experiment_out(experiment).model_dump(),
        runs=[RunOut.from_row(run) for run in experiment.runs],
    )


@router.get("/{experiment_id}/overlay_query", response_model=OverlayQueryOut)
def get_overlay_query(
    experiment_id: int,
    principal: ReaderDep,
    session: SessionDep,
    field: str | None = Query(
        None, max_length=200, description="A spec field or `label`; default the one the experiment varies."
    ),
    seeds: Seeds = Query("mean", description="`mean`: one line per value, seeds folded into a band; `each`: a line per run."),
    series: str | None = Query(None, max_length=64, description="A series to chart besides the five the page always draws."),
) -> OverlayQueryOut:
    """The metric query the experiment page's overlay charts send for these choices; with none, the
    one whose answer the worker keeps when the experiment's last run finishes."""
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    overlay = overlay_query(experiment, experiment.runs, field=field, seeds=seeds, series=series)
    return OverlayQueryOut(fields=overlay.fields, field=overlay.field, query=overlay.query)


@router.patch("/{experiment_id}", response_model=ExperimentOut)
def patch_experiment(
    experiment_id: int, patch: TagsPatch, principal: WriterDep, session: SessionDep, settings: SettingsDep
) -> ExperimentOut:
    """Set or remove the experiment's tags (merged; a null value removes its key) and replace its note."""
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    apply_patch(experiment, patch, settings)
    session.flush()
    return experiment_out(experiment)


@router.post(
    "/{experiment_id}/retry",
    response_model=ExperimentDetailOut,
    responses={409: problem_response("The experiment has no failed or cancelled runs.")},
)
def retry_experiment(
    experiment_id: int, principal: WriterDep, session: SessionDep, celery: CeleryDep, settings: SettingsDep
) -> ExperimentDetailOut:
    """Re-queue the experiment's failed and cancelled runs; each resumes from its latest checkpoint."""
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    continuation.retry_experiment(session, celery, settings, experiment)
    session.expire_all()
    return get_experiment(experiment_id, principal, session)


@router.delete(
    "/{experiment_id}",
    status_code=204,
    responses={409: problem_response("Runs are still running (retry), or forks elsewhere need its runs.")},
)
def delete_experiment(experiment_id: int, principal: WriterDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the experiment with its runs, metrics and checkpoints. Queued runs are cancelled at
    once; while runs are running they are asked to stop and the answer is a 409 to retry."""
    deletion.delete_experiment(session, settings, experiment_id, owner=principal.owner)
    return Response(status_code=204)
