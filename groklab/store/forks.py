"""Forked runs: a child continues from its parent's final state (ungrokking's phase 2)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from groklab.store.metrics import copy_series_points
from groklab.store.models import MetricSeries, Run, utcnow
from groklab.store.runs import FAILED, QUEUED, transition


def waiting_children(session: Session, parent_run_id: int) -> list[int]:
    return list(
        session.scalars(
            select(Run.id).where(Run.parent_run_id == parent_run_id, Run.status == QUEUED).order_by(Run.id)
        )
    )


def fail_children(session: Session, parent_run_id: int, *, parent_status: str) -> list[int]:
    children = waiting_children(session, parent_run_id)
    for child in children:
        transition(
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
    parent_series = session.execute(
        select(MetricSeries.id, MetricSeries.name).where(MetricSeries.run_id == parent_run_id)
    ).all()
    for parent_series_id, name in parent_series:
        if name in existing:
            continue
        child_series_id = session.scalar(
            insert(MetricSeries).values(run_id=child_run_id, name=name).returning(MetricSeries.id)
        )
        copy_series_points(session, parent_series_id, child_series_id)
