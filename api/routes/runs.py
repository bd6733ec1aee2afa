"""/v1/runs: status, listing with cursor pagination, metric series, cancellation."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.auth import ReaderDep, WriterDep
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.problems import problem_response
from api.query_params import apply_patch, where_object
from api.schemas import (
    MetricsOut,
    RunDetailOut,
    RunEventOut,
    RunOut,
    RunPage,
    TagsPatch,
)
from groklab import run_listing
from groklab.continuation import ContinueRequest, continue_run
from groklab.errors import InvalidInput
from groklab.settings import comma_list
from groklab.store import metric_reads
from groklab.store import runs as run_store
from groklab.store.runs import RUN_STATUSES

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.get("", response_model=RunPage)
def list_runs(
    principal: ReaderDep,
    session: SessionDep,
    settings: SettingsDep,
    experiment_id: int | None = Query(None, ge=1, le=run_store.MAX_ID),
    status: str | None = Query(None, max_length=200, description=f"Comma-separated; each one of {', '.join(RUN_STATUSES)}."),
    where: str | None = Query(
        None,
        max_length=4000,
        description='A JSON object of dotted spec paths and the values runs must have, e.g. {"task.train_size": 1000}.',
    ),
    label: str | None = Query(
        None,
        max_length=400,
        description="Comma-separated analysis labels (grokked, memorised, ...); only succeeded runs have one.",
    ),
    tag: str | None = Query(
        None, max_length=2000, description="Comma-separated `key=value` (that value) or `key` (any value); all must hold."
    ),
    sort: str | None = Query(
        None,
        max_length=220,
        description="A run column (id, created_at, status, step, ...), label, final_<series> (e.g. "
        "final_test_acc) or spec.<path>; a leading - sorts descending; nulls last. Default id.",
    ),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=400, description="next_cursor of the previous page"),
) -> RunPage:
    """Runs, oldest first or sorted, filtered by experiment, status, spec fields, label and tags."""
    statuses = comma_list(status)
    for one in statuses or ():
        if one not in RUN_STATUSES:
            raise InvalidInput(f"unknown status {one!r}; one of {', '.join(RUN_STATUSES)}", field="status")
    listing = run_listing.list_runs(
        session,
        owner=principal.owner,
        experiment_id=experiment_id,
        statuses=statuses,
        where=where_object(where),
        labels=comma_list(label),
        tags=comma_list(tag) or [],
        sort=sort,
        limit=limit,
        cursor=cursor,
        max_listed_runs=settings.max_listed_runs,
        cache_bytes=settings.answer_cache_bytes,
    )
    return RunPage(items=[RunOut.from_row(run) for run in listing.runs], next_cursor=listing.next_cursor)


@router.patch("/{run_id}", response_model=RunOut)
def patch_run(run_id: int, patch: TagsPatch, principal: WriterDep, session: SessionDep, settings: SettingsDep) -> RunOut:
    """Set or remove the run's tags (merged; a null value removes its key) and replace its note."""
    run = run_store.get_run(session, run_id, owner=principal.owner)
    apply_patch(run, patch, settings)
    session.flush()
    return RunOut.from_row(run)


@router.get("/{run_id}", response_model=RunDetailOut)
def get_run(run_id: int, principal: ReaderDep, session: SessionDep) -> RunDetailOut:
    run = run_store.get_run(session, run_id, owner=principal.owner)
    events = [
        RunEventOut(status=e.status, at=e.at, message=e.message)  # type: ignore[arg-type]
        for e in run_store.run_events(session, run_id)
    ]
    return RunDetailOut(**RunOut.from_row(run).model_dump(), events=events)


@router.get("/{run_id}/metrics", response_model=MetricsOut)
def get_metrics(
    run_id: int,
    principal: ReaderDep,
    session: SessionDep,
    names: str | None = Query(None, description="Comma-separated series names; all series when omitted.", max_length=4000),
    start_step: int | None = Query(None, ge=0),
    end_step: int | None = Query(None, ge=0),
) -> MetricsOut:
    """Every point of the chosen series in [start_step, end_step]; unknown names give empty lists."""
    if start_step is not None and end_step is not None and end_step < start_step:
        raise InvalidInput("end_step is before start_step", field="end_step")
    run_store.get_run(session, run_id, owner=principal.owner)
    series = metric_reads.read_series(session, run_id, names=comma_list(names), start_step=start_step, end_step=end_step)
    return MetricsOut(run_id=run_id, series=series)  # type: ignore[arg-type]


@router.post("/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: int, principal: WriterDep, session: SessionDep) -> RunOut:
    """A queued run is cancelled now; a running one stops within seconds, keeping its metrics."""
    run = run_store.request_cancel(session, run_id, owner=principal.owner)
    return RunOut.from_row(run)


@router.post(
    "/{run_id}/continue",
    response_model=RunOut,
    responses={409: problem_response("The run is not succeeded.")},
)
def continue_finished_run(
    run_id: int,
    request: ContinueRequest,
    principal: WriterDep,
    session: SessionDep,
    celery: CeleryDep,
    settings: SettingsDep,
) -> RunOut:
    """Train a succeeded run further: a new phase of `steps` (optionally with its own weight decay
    or on a subset D'), resumed from the run's final checkpoint on any worker."""
    run = continue_run(session, celery, settings, run_id, request, owner=principal.owner)
    return RunOut.from_row(run)
