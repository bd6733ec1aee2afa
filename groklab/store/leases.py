"""Run leases: which worker may train a run right now, and for how long.

A worker claims a queued run by bumping its fencing token; every later write of that worker
(metric flushes, the final status) is conditional on the token still being its own. When a
worker vanishes, its lease expires, the reconciler re-queues the run with a new token, and any
late write of the old worker is refused with LeaseLost instead of corrupting the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, aliased

from groklab.lifecycle import CANCELLED, FINISHED_STATUSES, QUEUED, RUNNING, SUCCEEDED, check_transition
from groklab.store.models import Run, RunEvent, utcnow
from groklab.store.runs import move


class LeaseLost(RuntimeError):
    """This worker's lease on the run moved on: it must stop writing to it."""


@dataclass(frozen=True)
class Lease:
    run_id: int
    token: int
    worker: str


def claim_run(session: Session, run_id: int, *, worker: str, lease_seconds: float, message: str | None = None) -> Lease | None:
    """queued -> running under a fresh lease; None if the run is not claimable (taken, cancelled).

    `message` names the broker message that carried the run (its pack), so the run's events tell
    which runs were trained together as one ensemble."""
    check_transition([QUEUED], RUNNING)  # its own UPDATE rather than `move`: it returns the new token
    now = utcnow()
    token = session.scalar(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED, Run.cancel_requested.is_(False))
        .values(
            status=RUNNING,
            worker=worker,
            lease_token=Run.lease_token + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Run.attempts + 1,
            started_at=now,
        )
        .returning(Run.lease_token)
        .execution_options(synchronize_session=False)
    )
    if token is None:
        return None
    started = f"started on {worker}" if message is None else f"started on {worker} from {message}"
    session.add(RunEvent(run_id=run_id, status=RUNNING, message=started))
    return Lease(run_id=run_id, token=token, worker=worker)


def _held(lease: Lease) -> list:  # type: ignore[type-arg]
    return [Run.id == lease.run_id, Run.status == RUNNING, Run.lease_token == lease.token]


def renew(session: Session, lease: Lease, *, lease_seconds: float) -> None:
    """Extend the lease; raises LeaseLost if it is no longer this worker's."""
    result = session.execute(
        update(Run)
        .where(*_held(lease))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"run {lease.run_id}: lease {lease.token} of {lease.worker} is gone")


def finish(
    session: Session, lease: Lease, *, status: str, error: str | None = None, stopped_early_at_step: int | None = None
) -> bool:
    if status not in FINISHED_STATUSES:
        raise ValueError(f"not a final status: {status}")
    return move(
        session,
        lease.run_id,
        from_statuses=[RUNNING],
        to_status=status,
        message=error
        if stopped_early_at_step is None
        else f"a stop_when condition held: stopped at step {stopped_early_at_step}",
        extra_where=[Run.lease_token == lease.token],
        error=error,
        finished_at=utcnow(),
        lease_expires_at=None,
        stopped_early_at_step=stopped_early_at_step,
    )


def release_to_queue(session: Session, lease: Lease, *, reason: str) -> bool:
    """running -> queued (worker shutting down); the caller sends a new message after commit."""
    return move(
        session,
        lease.run_id,
        from_statuses=[RUNNING],
        to_status=QUEUED,
        message=reason,
        extra_where=[Run.lease_token == lease.token],
        lease_expires_at=None,
        enqueued_at=None,
    )


def expire_leases(session: Session, *, now: datetime | None = None) -> list[int]:
    """Re-queue running runs whose lease ran out; bumping the token fences their old worker."""
    now = now or utcnow()
    expired = list(session.scalars(select(Run.id).where(Run.status == RUNNING, Run.lease_expires_at < now)))
    requeued = []
    for run_id in expired:
        if move(
            session,
            run_id,
            from_statuses=[RUNNING],
            to_status=QUEUED,
            message="lease expired (worker lost); re-queued",
            extra_where=[Run.lease_expires_at < now],
            lease_token=Run.lease_token + 1,
            lease_expires_at=None,
            enqueued_at=None,
        ):
            requeued.append(run_id)
    return requeued


def release_worker_runs(session: Session, worker: str, *, reason: str) -> list[int]:
    """Re-queue the running runs whose lease `worker` holds, because it is known to be dead.

    Unlike `expire_leases` this does not wait for the leases to run out; bumping the token still
    fences the worker, so even a worker wrongly taken for dead could write nothing more. A run
    whose cancel was requested is cancelled instead, since nobody is left to stop it.
    """
    held = list(session.scalars(select(Run.id).where(Run.status == RUNNING, Run.worker == worker).order_by(Run.id)))
    requeued = []
    for run_id in held:
        fence = {"lease_token": Run.lease_token + 1, "lease_expires_at": None}
        if move(
            session,
            run_id,
            from_statuses=[RUNNING],
            to_status=QUEUED,
            message=reason,
            extra_where=[Run.worker == worker, Run.cancel_requested.is_(False)],
            enqueued_at=None,
            **fence,
        ):
            requeued.append(run_id)
        else:
            move(
                session,
                run_id,
                from_statuses=[RUNNING],
                to_status=CANCELLED,
                message=f"{reason}; its cancel was requested, so it is cancelled",
                extra_where=[Run.worker == worker],
                finished_at=utcnow(),
                **fence,
            )
    return requeued


def runs_to_send(session: Session, *, older_than: datetime) -> list[int]:
    """Queued runs whose last message (if any) is older than `older_than` and may start now
    (a fork only once its parent succeeded)."""
    parent = aliased(Run)
    # The parent's status as a correlated scalar subquery, looked up by primary key for each
    # queued fork: an outer join, or an EXISTS under the OR, let PostgreSQL read every run in the
    # database to hash the few parents.
    parent_status = select(parent.status).where(parent.id == Run.parent_run_id).scalar_subquery()
    query = (
        select(Run.id)
        .where(
            Run.status == QUEUED,
            Run.cancel_requested.is_(False),
            or_(Run.enqueued_at.is_(None), Run.enqueued_at < older_than),
            or_(Run.parent_run_id.is_(None), parent_status == SUCCEEDED),
        )
        .order_by(Run.id)
    )
    return list(session.scalars(query))


def waiting_for_worker(session: Session, *, older_than: datetime) -> list[int]:
    """Queued runs whose message was sent before `older_than` and that no worker has taken, the
    longest waiting first."""
    query = (
        select(Run.id)
        .where(Run.status == QUEUED, Run.cancel_requested.is_(False), Run.enqueued_at < older_than)
        .order_by(Run.enqueued_at, Run.id)
    )
    return list(session.scalars(query))


def take_turn(session: Session, run_ids: list[int], *, older_than: datetime) -> bool:
    """Whether this caller is the one to make room for these waiting runs (fair share): True for
    the first caller only, as the conditional update marks them as just sent for all others.

    Bumping enqueued_at defers a reconciler re-send by requeue_grace_seconds, which matters only
    for a run whose message was lost; the reconciler sends it after that grace as before."""
    result = session.execute(
        update(Run)
        .where(Run.id.in_(run_ids), Run.status == QUEUED, Run.enqueued_at < older_than)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount > 0


def mark_enqueued(session: Session, run_ids: list[int]) -> None:
    if run_ids:
        session.execute(
            update(Run).where(Run.id.in_(run_ids)).values(enqueued_at=utcnow()).execution_options(synchronize_session=False)
        )
