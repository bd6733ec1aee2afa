"""Per-owner submission limits, counted in the database so that every api replica sees the same."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from groklab.errors import InvalidInput, TooManyRequests
from groklab.store.models import Experiment, Run, utcnow
from groklab.store.runs import QUEUED, RUNNING

RATE_WINDOW = timedelta(seconds=60)


def lock_owner_submissions(session: Session, owner: str) -> None:
    """Serialise one owner's submissions until the transaction ends (PostgreSQL).

    Without it two replicas could each count the same window, both pass, and overshoot a limit;
    it also makes a concurrent retry with the same Idempotency-Key wait for the first and find
    its row. SQLite needs none: the embedded mode has one api and SQLite one writer at a time.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    lock_id = int.from_bytes(hashlib.sha256(f"submit:{owner}".encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def check_submission_rate(session: Session, owner: str, *, per_minute: int, now: datetime | None = None) -> None:
    """At most `per_minute` experiments in any 60 s; Retry-After says when the oldest ages out."""
    now = now or utcnow()
    recent = list(
        session.scalars(
            select(Experiment.created_at)
            .where(Experiment.owner == owner, Experiment.created_at > now - RATE_WINDOW)
            .order_by(Experiment.created_at.desc())
            .limit(per_minute)
        )
    )
    if len(recent) < per_minute:
        return
    frees_at = recent[-1] + RATE_WINDOW
    retry_after = max(1, math.ceil((frees_at - now).total_seconds()))
    raise TooManyRequests(
        f"submission rate limit: at most {per_minute} experiments per minute per owner "
        f"(GROKLAB_SUBMISSIONS_PER_MINUTE); retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def queued_steps(session: Session, owner: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Run.total_steps), 0))
            .join(Experiment)
            .where(Experiment.owner == owner, Run.status.in_([QUEUED, RUNNING]))
        )
    )


def check_queued_work(session: Session, owner: str, *, new_steps: int, limit: int) -> None:
    """An experiment larger than the limit can never fit (422); one that fits later waits (429)."""
    if new_steps > limit:
        raise InvalidInput(
            f"the experiment needs {new_steps} optimizer steps, over the queued-work limit of "
            f"{limit} per owner (GROKLAB_MAX_QUEUED_STEPS_PER_OWNER)",
            field="phases",
        )
    pending = queued_steps(session, owner)
    if pending + new_steps > limit:
        raise TooManyRequests(
            f"queued-work limit: your queued and running runs hold {pending} optimizer steps and "
            f"this experiment adds {new_steps}, over the limit of {limit} per owner "
            "(GROKLAB_MAX_QUEUED_STEPS_PER_OWNER); wait for runs to finish or cancel some"
        )
