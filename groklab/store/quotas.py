"""Per-owner submission limits, counted in the database so that every api replica sees the same."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from groklab.errors import InvalidInput, TooManyRequests
from groklab.storage import METRIC_POINT_BYTES, human_bytes
from groklab.store.models import CheckpointRecord, Experiment, Run, utcnow
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


@dataclass(frozen=True)
class Usage:
    """An owner's storage: what its runs store now, and what its queued and running runs will
    still store by their specs (planned beyond stored, never below zero)."""

    runs: int
    unfinished_runs: int
    stored_points: int
    planned_points: int
    stored_checkpoint_bytes: int
    planned_checkpoint_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.stored_points * METRIC_POINT_BYTES + self.stored_checkpoint_bytes

    @property
    def planned_bytes(self) -> int:
        return self.planned_points * METRIC_POINT_BYTES + self.planned_checkpoint_bytes


def owner_usage(session: Session, owner: str) -> Usage:
    """Summed from per-run counters (runs.stored_points, kept by write_points) and the checkpoint
    index in two index scans over the owner's runs: no metric point is read."""
    owned = select(Run.id).join(Experiment).where(Experiment.owner == owner)
    checkpoint_bytes = (
        select(CheckpointRecord.run_id, func.sum(CheckpointRecord.size_bytes).label("bytes"))
        .where(CheckpointRecord.run_id.in_(owned))
        .group_by(CheckpointRecord.run_id)
        .subquery()
    )
    stored_checkpoint = func.coalesce(checkpoint_bytes.c.bytes, 0)
    unfinished = Run.status.in_([QUEUED, RUNNING])

    def still_to_store(planned: object, stored: object) -> object:
        return case((unfinished & (planned > stored), planned - stored), else_=0)  # type: ignore[operator]

    row = session.execute(
        select(
            func.count(Run.id),
            func.count(case((unfinished, 1))),
            func.coalesce(func.sum(Run.stored_points), 0),
            func.coalesce(func.sum(still_to_store(Run.planned_points, Run.stored_points)), 0),
            func.coalesce(func.sum(stored_checkpoint), 0),
            func.coalesce(func.sum(still_to_store(Run.planned_checkpoint_bytes, stored_checkpoint)), 0),
        )
        .select_from(Run)
        .join(Experiment)
        .outerjoin(checkpoint_bytes, checkpoint_bytes.c.run_id == Run.id)
        .where(Experiment.owner == owner)
    ).one()
    return Usage(*(int(value) for value in row))


def check_stored_bytes(session: Session, owner: str, *, new_bytes: int, limit: int, field: str = "phases") -> None:
    """Work whose runs alone would store more than the limit can never fit (422); work that fits
    once the owner deletes runs waits (429). Counted in the database, so every api replica agrees
    (under lock_owner_submissions, two replicas cannot both pass)."""
    if new_bytes > limit:
        raise InvalidInput(
            f"the runs would store {human_bytes(new_bytes)} of metric points and checkpoints, over the "
            f"storage limit of {human_bytes(limit)} per owner (GROKLAB_MAX_STORED_BYTES_PER_OWNER)",
            field=field,
        )
    usage = owner_usage(session, owner)
    if usage.stored_bytes + usage.planned_bytes + new_bytes > limit:
        raise TooManyRequests(
            f"storage limit: your runs store {human_bytes(usage.stored_bytes)} and your queued and running "
            f"runs will store {human_bytes(usage.planned_bytes)} more; this adds {human_bytes(new_bytes)}, "
            f"over the limit of {human_bytes(limit)} per owner (GROKLAB_MAX_STORED_BYTES_PER_OWNER). "
            "Delete experiments you no longer need (GET /v1/usage shows where you stand)"
        )
