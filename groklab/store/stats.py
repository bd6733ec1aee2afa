"""Counts for monitoring, read at scrape time: runs by status across every owner."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from groklab.store.models import Run
from groklab.store.runs import RUN_STATUSES


def count_runs_by_status(session: Session) -> dict[str, int]:
    """Every status present, zero included, so a gauge's series never vanish."""
    counts = dict.fromkeys(RUN_STATUSES, 0)
    for status, count in session.execute(select(Run.status, func.count()).group_by(Run.status)):
        counts[status] = count
    return counts
