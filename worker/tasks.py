"""The training task: claim runs' leases, train them as one ensemble, record each outcome.

The task is idempotent: it trains a run only if it wins the run's conditional claim in the
database, so a duplicate delivery, or a re-send by the reconciler, trains nothing twice. A run
always resumes from its last checkpoint, so a run re-queued after a lost worker continues where
the checkpoint left it and re-logs the same points (metric writes are upserts).

One message carries the runs of a pack (engine.packing): runs that share a model shape train
as one batched ensemble, and each keeps its own lease, metrics, checkpoint and outcome.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from celery.worker import state as worker_state

from engine.spec import RunSpec
from engine.train import train_ensemble
from groklab import forks
from groklab.dispatch import dispatch_runs
from groklab.fair_share import YieldPoll
from groklab.json_logs import log_context
from groklab.lifecycle.finish import LEASE_LOST, RunEnding, finish_runs
from groklab.checkpoint_format import RunCheckpoints
from groklab.run_specs import spec_of
from groklab.settings import Settings, get_settings
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from worker.celery_app import app
from worker.celery_config import TRAIN_RUNS_TASK
from worker.sink import DatabaseMetricSink, MetricWriter

log = logging.getLogger(__name__)


@dataclass
class ClaimedRun:
    """One run of the pack that this worker claimed: its lease, metric sink and checkpoints (the
    engine trains the pack as an ensemble of members: engine.train._Member)."""

    run_id: int
    experiment_id: int
    lease: leases.Lease
    spec_data: dict[str, Any]
    parent_run_id: int | None
    sink: DatabaseMetricSink
    checkpoints: RunCheckpoints
    resumed: bool = False


@dataclass
class Ending:
    """How a member's run ended, to be recorded."""

    member: ClaimedRun
    status: str
    error: str | None = None
    stopped_early_at_step: int | None = None


def _worker_shutting_down() -> bool:
    # Celery's SIGTERM/SIGINT handlers set these in the worker's main process (solo pool).
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def _set_torch_threads(threads: int | None) -> None:
    # `groklab up` shares the cores among its workers through GROKLAB_TORCH_THREADS.
    torch.set_num_threads(threads or os.cpu_count() or 1)


def _claim(
    settings: Settings, store: CheckpointStore, run_ids: list[int], worker_name: str, message_id: str | None = None
) -> list[ClaimedRun]:
    message = None if message_id is None else f"message {message_id} of {len(run_ids)} runs"
    # The runs train as one ensemble: their points go to the database together, one transaction
    # per flush for all of them, each still fenced by its own lease (worker/sink.py).
    metrics = MetricWriter(
        settings.resolved_database_url,
        lease_seconds=settings.lease_seconds,
        flush_seconds=settings.metric_flush_seconds,
        flush_points=settings.metric_flush_points,
    )
    members: list[ClaimedRun] = []
    for run_id in run_ids:
        with session_scope(settings.resolved_database_url) as session:
            lease = leases.claim_run(session, run_id, worker=worker_name, lease_seconds=settings.lease_seconds, message=message)
            if lease is None:
                log.info("run %s is not claimable (taken, cancelled or finished); skipping", run_id)
                continue
            run = run_store.get_run(session, run_id)
            sink = metrics.sink(lease)
            checkpoints = RunCheckpoints(store, run_id, lease)
            members.append(ClaimedRun(run_id, run.experiment_id, lease, run.spec, run.parent_run_id, sink, checkpoints))
    for member in members:
        member.resumed = _note_resume(settings, store, member)
    return members


def _note_resume(settings: Settings, store: CheckpointStore, member: ClaimedRun) -> bool:
    """A run that resumes says from which step, in its status history; whether it resumes."""
    stored = store.list_checkpoints(member.run_id)
    if not stored:
        return False
    message = f"resuming from the checkpoint at step {stored[-1].step}"
    log.info("run %s: %s", member.run_id, message)
    with session_scope(settings.resolved_database_url) as session:
        run_store.add_event(session, member.run_id, run_store.RUNNING, message)
    return True


def _cancel_poller(settings: Settings, members: list[ClaimedRun]) -> Callable[[int], bool]:
    """should_stop for member k; one database query per poll interval answers for all members."""
    run_ids = [m.run_id for m in members]
    cancelled: set[int] = set()
    last = time.monotonic()

    def cancel_requested(k: int) -> bool:
        nonlocal last
        now = time.monotonic()
        if now - last >= settings.cancel_poll_seconds:
            last = now
            try:
                with session_scope(settings.resolved_database_url) as session:
                    cancelled.update(run_store.cancel_requested_among(session, run_ids))
            except Exception:
                log.warning("cancel poll failed (database unavailable?)", exc_info=True)
        return run_ids[k] in cancelled

    return cancel_requested


@app.task(name=TRAIN_RUNS_TASK, bind=True)
def train_runs(self, run_ids: list[int]) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """Claim the message's runs, train those that start as one ensemble, record each outcome."""
    settings = get_settings()
    store = CheckpointStore.from_settings(settings)
    members = _claim(settings, store, [int(r) for r in run_ids], self.request.hostname or "worker", self.request.id)
    if not members:
        return {}
    _set_torch_threads(settings.torch_threads)
    ready, specs, outcomes = _start(settings, members)
    if not ready:
        return outcomes
    cancel_requested = _cancel_poller(settings, ready)
    give_way = YieldPoll(settings, specs, resumed=any(member.resumed for member in ready))

    def should_stop(k: int) -> bool:
        return ready[k].sink.lease_lost or _worker_shutting_down() or cancel_requested(k) or give_way()

    try:
        results = train_ensemble(
            specs,
            [member.sink for member in ready],
            checkpoints=[member.checkpoints for member in ready],
            should_stop=should_stop,
            device=None if settings.device == "auto" else settings.device,
            checkpoint_seconds=None if settings.checkpoint_minutes is None else 60 * settings.checkpoint_minutes,
        )
    except Exception as exc:
        log.exception("ensemble of runs %s failed", [m.run_id for m in ready])
        for member in ready:
            member.sink.flush()
        error = f"{type(exc).__name__}: {exc}"
        return outcomes | _finish(settings, [Ending(member, run_store.FAILED, error=error) for member in ready])
    return outcomes | _record_results(settings, ready, results, cancel_requested, give_way)


def _start(settings: Settings, members: list[ClaimedRun]) -> tuple[list[ClaimedRun], list[RunSpec], dict[int, str]]:
    """The members that start (their spec parsed, a fork given its parent's checkpoint and series)
    with their specs; the others fail at once, and their outcomes are the third item."""
    outcomes: dict[int, str] = {}
    ready: list[ClaimedRun] = []
    specs: list[RunSpec] = []
    for member in members:
        with log_context(run_id=member.run_id, experiment_id=member.experiment_id):
            try:
                spec = spec_of(member.run_id, member.spec_data)
                if member.parent_run_id is not None:
                    forks.start_child(settings, member.checkpoints, member.parent_run_id)
            except Exception as exc:
                log.exception("run %s could not start", member.run_id)
                outcomes |= _finish(settings, [Ending(member, run_store.FAILED, error=f"{type(exc).__name__}: {exc}")])
                continue
        ready.append(member)
        specs.append(spec)
    return ready, specs, outcomes


def _record_results(
    settings: Settings,
    ready: list[ClaimedRun],
    results: list[Any],
    cancel_requested: Callable[[int], bool],
    give_way: YieldPoll,
) -> dict[int, str]:
    """Each trained member's outcome: re-queued (its worker shuts down, or it gave way to a short
    run), or ended (failed, cancelled, succeeded); a member whose lease moved on records nothing."""
    outcomes: dict[int, str] = {}
    requeue: list[int] = []
    yielded: list[int] = []
    endings: list[Ending] = []
    for k, (member, result) in enumerate(zip(ready, results, strict=True)):
        with log_context(run_id=member.run_id, experiment_id=member.experiment_id):
            member.sink.flush()
            if member.sink.lease_lost:
                outcomes[member.run_id] = LEASE_LOST
            elif result.error is not None:
                endings.append(Ending(member, run_store.FAILED, error=result.error))
            elif result.stopped and _worker_shutting_down() and not cancel_requested(k):
                if _release(settings, member, f"{member.lease.worker} shut down; re-queued"):
                    requeue.append(member.run_id)
                log.info("run %s checkpointed at step %s and re-queued (worker shutting down)", member.run_id, result.final_step)
                outcomes[member.run_id] = run_store.QUEUED
            elif result.stopped and give_way.gave_way_to is not None and not cancel_requested(k):
                shorts = ", ".join(map(str, give_way.gave_way_to))
                reason = (
                    f"yielded {member.lease.worker} at step {result.final_step} to short run(s) {shorts} "
                    "(fair share); re-queued ahead of the long runs"
                )
                if _release(settings, member, reason):
                    yielded.append(member.run_id)
                log.info(
                    "run %s checkpointed at step %s and yielded to short run(s) %s", member.run_id, result.final_step, shorts
                )
                outcomes[member.run_id] = run_store.QUEUED
            else:
                status = run_store.CANCELLED if result.stopped else run_store.SUCCEEDED
                log.info("run %s %s at step %s (%s points)", member.run_id, status, result.final_step, member.sink.points_written)
                endings.append(Ending(member, status, stopped_early_at_step=result.stopped_early_at_step))
    # All at once, so that the children of the parents this ensemble finished fill whole packs.
    outcomes |= _finish(settings, endings)
    _send_again(settings, requeue, yielded)
    return outcomes


def _release(settings: Settings, member: ClaimedRun, reason: str) -> bool:
    """running -> queued under the member's lease; whether it still held the lease."""
    with session_scope(settings.resolved_database_url) as session:
        return leases.release_to_queue(session, member.lease, reason=reason)


def _send_again(settings: Settings, requeue: list[int], yielded: list[int]) -> None:
    """New messages for the runs this worker put back in the queue."""
    if requeue:
        with session_scope(settings.resolved_database_url) as session:
            dispatch_runs(session, app, requeue, ensemble_size=settings.ensemble_size)
    if yielded:
        # To the end of the priority queue: back on a worker after the short runs waiting now.
        with session_scope(settings.resolved_database_url) as session:
            dispatch_runs(session, app, yielded, ensemble_size=settings.ensemble_size, first=True)


def _finish(settings: Settings, endings: list[Ending]) -> dict[int, str]:
    """The run lifecycle's finish path (groklab/lifecycle/finish.py) for the pack's members."""
    return finish_runs(
        settings,
        app,
        [RunEnding(e.member.lease, e.member.experiment_id, e.status, e.error, e.stopped_early_at_step) for e in endings],
    )
