"""Experiments and runs: creation, listing, and the run lifecycle's moves as conditional updates.

A run changes status only through `move` (the moves groklab.lifecycle allows), an UPDATE guarded
by the statuses it may come from, so two processes racing on one run (a duplicate task delivery,
a cancel during start-up) cannot both win; every move that happens is recorded as a RunEvent.

Reads take an `owner`: another owner's experiment or run is NotFound, exactly like a missing one,
so ids reveal nothing across owners. `owner=None` (workers, the reconciler) sees everything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, delete, func, select, update
from sqlalchemy.orm import Session

from groklab.errors import Conflict, InvalidInput, NotFound
from groklab.lifecycle import (  # noqa: F401  (the statuses' one home; the store's callers read them here too)
    CANCELLED,
    FAILED,
    FINISHED_STATUSES,
    QUEUED,
    RUN_STATUSES,
    RUNNING,
    SUCCEEDED,
    RunStatus,
    check_transition,
)
from groklab.store import answer_cache
from groklab.store.metric_writes import delete_series
from groklab.store.models import LOCAL_OWNER, Experiment, Run, RunEvent, utcnow

MAX_ID = 2**31 - 1
"""Ids are 32-bit on PostgreSQL: a larger one cannot exist, and binding it is a database error."""


@dataclass(frozen=True)
class NewRun:
    spec: dict[str, Any]
    total_steps: int
    role: str | None = None
    parent_index: int | None = None
    """Position, among the new runs, of the run whose final state this one continues."""
    parent_run_id: int | None = None
    """An existing run whose final state this one continues."""
    search_round: int | None = None
    planned_points: int = 0
    """Metric points the spec will store (groklab/storage.py), counted towards the owner's usage."""
    planned_checkpoint_bytes: int = 0


def create_experiment(
    session: Session,
    *,
    name: str | None,
    spec: dict[str, Any],
    runs: Sequence[NewRun],
    kind: str = "sweep",
    owner: str = LOCAL_OWNER,
) -> Experiment:
    experiment = Experiment(name=name, kind=kind, spec=spec, owner=owner)
    session.add(experiment)
    add_runs(session, experiment, runs)
    return experiment


def add_runs(session: Session, experiment: Experiment, runs: Sequence[NewRun]) -> list[Run]:
    """Queued runs appended to the experiment, indexed after its others; `parent_index` counts
    within `runs`. A d_crit_search adds each round this way."""
    start = len(experiment.runs)
    added = [
        Run(
            index=start + i,
            spec=new.spec,
            total_steps=new.total_steps,
            role=new.role,
            parent_run_id=new.parent_run_id,
            search_round=new.search_round,
            planned_points=new.planned_points,
            planned_checkpoint_bytes=new.planned_checkpoint_bytes,
            status=QUEUED,
        )
        for i, new in enumerate(runs)
    ]
    experiment.runs.extend(added)
    session.flush()
    # A new round (or fork) changes what the experiment's queries select: its kept answers go.
    answer_cache.forget(session, experiment.id)
    for run, new in zip(added, runs, strict=True):
        if new.parent_index is not None:
            run.parent_run_id = added[new.parent_index].id
    session.add_all(RunEvent(run_id=run.id, status=QUEUED) for run in added)
    session.flush()
    return added


def get_experiment(session: Session, experiment_id: int, *, owner: str | None = None) -> Experiment:
    experiment = session.get(Experiment, experiment_id) if 0 < experiment_id <= MAX_ID else None
    if experiment is None or (owner is not None and experiment.owner != owner):
        raise NotFound(f"experiment {experiment_id} does not exist", field="experiment_id")
    return experiment


def list_experiments(
    session: Session, *, limit: int, before_id: int | None, owner: str | None = None, tags: Sequence[str] = ()
) -> list[Experiment]:
    """Newest first; `before_id` is the cursor of the previous page; `tags` as `tag_conditions`."""
    query = select(Experiment).order_by(Experiment.id.desc()).limit(limit).where(*tag_conditions(Experiment.tags, tags))
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    if before_id is not None:
        query = query.where(Experiment.id < before_id)
    return list(session.scalars(query))


@dataclass(frozen=True)
class ExperimentRuns:
    """What a listing shows of an experiment's runs: their ids in id order, and how many are in
    each status."""

    run_ids: list[int]
    status_counts: dict[str, int]


def experiment_runs(session: Session, experiment_ids: Sequence[int]) -> dict[int, ExperimentRuns]:
    """Each experiment's runs as a listing page shows them (loading whole runs, spec and all, grew
    with the page). One row per experiment and status, its ids joined in one string: a page of 50
    experiments of 500 runs read 25,000 rows one by one (43 ms at 50,000 runs, 25 ms now)."""
    ids: dict[int, list[int]] = {experiment_id: [] for experiment_id in experiment_ids}
    counts: dict[int, dict[str, int]] = {experiment_id: {} for experiment_id in experiment_ids}
    rows = session.execute(
        select(Run.experiment_id, Run.status, func.count(), func.aggregate_strings(cast(Run.id, String), ","))
        .where(Run.experiment_id.in_(list(experiment_ids)))
        .group_by(Run.experiment_id, Run.status)
    )
    for experiment_id, status, count, joined_ids in rows:
        ids[experiment_id].extend(map(int, joined_ids.split(",")))
        counts[experiment_id][status] = count
    return {experiment_id: ExperimentRuns(sorted(ids[experiment_id]), counts[experiment_id]) for experiment_id in experiment_ids}


def get_run(session: Session, run_id: int, *, owner: str | None = None) -> Run:
    run = session.get(Run, run_id) if 0 < run_id <= MAX_ID else None
    if run is None or (owner is not None and run.experiment.owner != owner):
        raise NotFound(f"run {run_id} does not exist", field="run_id")
    return run


def list_runs(
    session: Session,
    *,
    experiment_id: int | None,
    statuses: Sequence[str] | None,
    limit: int | None,
    after_id: int | None,
    owner: str | None = None,
    tags: Sequence[str] = (),
) -> list[Run]:
    """Oldest first; `after_id` is the cursor of the previous page; `tags` as `tag_conditions`."""
    query = select(Run).join(Experiment).order_by(Run.id).where(*tag_conditions(Run.tags, tags))
    if limit is not None:
        query = query.limit(limit)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    if experiment_id is not None:
        query = query.where(Run.experiment_id == experiment_id)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if after_id is not None:
        query = query.where(Run.id > after_id)
    return list(session.scalars(query))


TAG_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


def tag_conditions(column: Any, tags: Sequence[str]) -> list[Any]:
    """WHERE clauses for tag filters: 'key=value' (that value) or 'key' (any value). JSON paths
    differ between the databases; SQLAlchemy's JSON index renders each one's."""
    conditions = []
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not TAG_KEY.match(key):
            raise InvalidInput(f"tag filter {tag[:80]!r}: keys are 1-64 of A-Z a-z 0-9 _ . : -", field="tag")
        extracted = column[key].as_string()
        conditions.append(extracted == value if equals else extracted.is_not(None))
    return conditions


def patch_tags(
    target: Experiment | Run,
    *,
    tags: dict[str, str | None] | None,
    note: str | None,
    set_note: bool,
    max_tags: int,
    max_tag_length: int,
    max_note_length: int,
) -> None:
    """Merge `tags` into the target's (a None value removes its key) and replace its note."""
    if tags is not None:
        merged = dict(target.tags or {})
        for key, value in tags.items():
            if value is None:
                merged.pop(key, None)
            elif len(value) > max_tag_length:
                raise InvalidInput(f"tag {key}'s value is over {max_tag_length} characters", field=f"tags.{key}")
            else:
                merged[key] = value
        if len(merged) > max_tags:
            raise InvalidInput(f"{len(merged)} tags; at most {max_tags}", field="tags")
        target.tags = merged or None
    if set_note:
        if note is not None and len(note) > max_note_length:
            raise InvalidInput(f"the note is over {max_note_length} characters", field="note")
        target.note = note or None


def run_events(session: Session, run_id: int) -> list[RunEvent]:
    return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


def add_event(session: Session, run_id: int, status: str, message: str) -> None:
    """A note in the run's status history that changes nothing else (e.g. where it resumed)."""
    session.add(RunEvent(run_id=run_id, status=status, message=message))


def transition(
    session: Session,
    run_id: int,
    *,
    from_statuses: Sequence[str],
    to_status: str,
    message: str | None = None,
    extra_where: Sequence[Any] = (),
    **values: Any,
) -> bool:
    """Whether the run moved: an UPDATE guarded by the statuses it may come from, recorded as a
    RunEvent. Unchecked: the server's moves go through `move`; tests use this to set a state up."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(from_statuses), *extra_where)
        .values(status=to_status, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.add(RunEvent(run_id=run_id, status=to_status, message=message))
    return True


def move(
    session: Session,
    run_id: int,
    *,
    from_statuses: Sequence[str],
    to_status: str,
    message: str | None = None,
    extra_where: Sequence[Any] = (),
    **values: Any,
) -> bool:
    """`transition` for a move the run lifecycle allows (groklab.lifecycle.TRANSITIONS); any
    other raises IllegalTransition and changes nothing."""
    check_transition(from_statuses, to_status)
    return transition(
        session, run_id, from_statuses=from_statuses, to_status=to_status, message=message, extra_where=extra_where, **values
    )


def request_cancel(session: Session, run_id: int, *, owner: str | None = None) -> Run:
    """A queued run is cancelled at once; a running one is flagged and its worker stops it."""
    run = get_run(session, run_id, owner=owner)
    if move(
        session,
        run_id,
        from_statuses=[QUEUED],
        to_status=CANCELLED,
        message="cancelled before it started",
        finished_at=utcnow(),
        cancel_requested=True,
    ):
        session.refresh(run)
        return run
    flagged = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RUNNING)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    session.refresh(run)
    if flagged.rowcount != 1 and run.status != CANCELLED:
        raise Conflict(f"run {run_id} is already {run.status}", field="run_id")
    return run


def specs_of(session: Session, run_ids: Sequence[int]) -> dict[int, tuple[int, dict[str, Any]]]:
    """Each run's experiment id and spec."""
    rows = session.execute(select(Run.id, Run.experiment_id, Run.spec).where(Run.id.in_(run_ids)))
    return {run_id: (experiment_id, spec) for run_id, experiment_id, spec in rows}


def cancel_requested_among(session: Session, run_ids: Sequence[int]) -> set[int]:
    """Which of these runs a user asked to cancel."""
    return set(session.scalars(select(Run.id).where(Run.id.in_(run_ids), Run.cancel_requested.is_(True))))


def cancel_experiment(session: Session, experiment: Experiment) -> list[int]:
    """Cancel the experiment's queued runs and ask its running ones to stop; the ids still running."""
    for run in experiment.runs:
        if run.status in (QUEUED, RUNNING):
            try:
                request_cancel(session, run.id)
            except Conflict:
                pass  # it finished meanwhile
    return [run.id for run in experiment.runs if run.status == RUNNING]


def delete_experiment(session: Session, experiment_id: int) -> None:
    """Delete the experiment's rows. Its runs, their events and checkpoint index rows and its
    idempotency keys cascade; metric points cannot (delete_series), nor checkpoint blobs, which
    the checkpoint store deletes first."""
    delete_series(session, select(Run.id).where(Run.experiment_id == experiment_id))
    session.execute(delete(Experiment).where(Experiment.id == experiment_id).execution_options(synchronize_session=False))
