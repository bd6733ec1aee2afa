"""The SQL of the fork lifecycle (groklab/forks.py): waiting children, their failure, copied series,
and the experiments whose unfinished forks still need a run of another."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from groklab.store.models import MetricPoint, MetricRollup, MetricSeries, Run, utcnow
from groklab.lifecycle import FAILED, FINISHED_STATUSES, QUEUED, SUCCEEDED
from groklab.store.runs import move


def parent_succeeded(child: Any, parent: Any) -> ColumnElement[bool]:
    """The condition, over a run and its outer-joined parent, that lets the run start."""
    return or_(child.parent_run_id.is_(None), parent.status == SUCCEEDED)


def experiments_forking_from(session: Session, experiment_id: int) -> list[int]:
    """Other experiments with unfinished runs forked from a run of this one: they still need its
    final checkpoint to start from (finished forks already hold a copy of its series)."""
    parent = aliased(Run)
    query = (
        select(Run.experiment_id)
        .join(parent, Run.parent_run_id == parent.id)
        .where(
            parent.experiment_id == experiment_id,
            Run.experiment_id != experiment_id,
            Run.status.not_in(FINISHED_STATUSES),
        )
        .distinct()
        .order_by(Run.experiment_id)
    )
    return list(session.scalars(query))


def waiting_children(session: Session, parent_run_ids: Collection[int]) -> list[int]:
    """The queued children of any of these parents, in run order (so by experiment, then plan)."""
    if not parent_run_ids:
        return []
    return list(
        session.scalars(select(Run.id).where(Run.parent_run_id.in_(list(parent_run_ids)), Run.status == QUEUED).order_by(Run.id))
    )


def fail_children(session: Session, parent_run_id: int, *, parent_status: str) -> list[int]:
    children = waiting_children(session, [parent_run_id])
    for child in children:
        move(
            session,
            child,
            from_statuses=[QUEUED],
            to_status=FAILED,
            message=f"parent run {parent_run_id} {parent_status}",
            error=f"parent run {parent_run_id} {parent_status}; this run continues from its final state",
            finished_at=utcnow(),
        )
    return children


def copy_parent_points(session: Session, parent_run_id: int, child_run_id: int) -> None:
    """Give the child the parent's series, so each run's series tell its whole history.

    Idempotent: a child that already has a series (a retried start) keeps its points.
    """
    existing = set(session.scalars(select(MetricSeries.name).where(MetricSeries.run_id == child_run_id)))
    parent_series = session.execute(select(MetricSeries.id, MetricSeries.name).where(MetricSeries.run_id == parent_run_id)).all()
    for parent_series_id, name in parent_series:
        if name in existing:
            continue
        child_series_id = session.scalar(insert(MetricSeries).values(run_id=child_run_id, name=name).returning(MetricSeries.id))
        copied = copy_series_points(session, parent_series_id, child_series_id)
        session.execute(
            update(Run)
            .where(Run.id == child_run_id)
            .values(stored_points=Run.stored_points + copied)
            .execution_options(synchronize_session=False)
        )


def copy_series_points(session: Session, from_series_id: int, to_series_id: int) -> int:
    """Give a new series every point (and rollup block) of another one; how many points."""
    copied = session.execute(
        insert(MetricPoint).from_select(
            ["series_id", "step", "value"],
            select(literal(to_series_id), MetricPoint.step, MetricPoint.value).where(MetricPoint.series_id == from_series_id),
        )
    )
    if session.get_bind().dialect.name == "postgresql":
        columns = [c for c in MetricRollup.__table__.columns if c.name != "series_id"]
        session.execute(
            insert(MetricRollup).from_select(
                ["series_id", *(c.name for c in columns)],
                select(literal(to_series_id), *columns).where(MetricRollup.series_id == from_series_id),
            )
        )
    return copied.rowcount
