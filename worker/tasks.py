"""The training task: claim a run's lease, train it with the engine, record the outcome.

The task is idempotent: it trains only if it wins the run's conditional claim in the database,
so a duplicate delivery, or a re-send by the reconciler, trains nothing twice. A run always
resumes from its last checkpoint, so a run re-queued after a lost worker continues where the
checkpoint left it and re-logs the same points (metric writes are upserts).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from celery.worker import state as worker_state

from groklab.queue import TRAIN_RUN_TASK, enqueue_run
from groklab.settings import Settings, get_settings
from groklab.store import forks, leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from worker.celery_app import app
from worker.sink import DatabaseMetricSink

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINTS_PER_RUN = 20


def _throttled(check: Callable[[], bool], every_seconds: float) -> Callable[[], bool]:
    """Ask at most every `every_seconds`; the engine polls between every step."""
    last = time.monotonic()

    def throttled() -> bool:
        nonlocal last
        now = time.monotonic()
        if now - last < every_seconds:
            return False
        last = now
        return check()

    return throttled


def _worker_shutting_down() -> bool:
    # Celery's SIGTERM/SIGINT handlers set these in the worker's main process (solo pool).
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def _set_torch_threads(threads: int | None) -> None:
    import torch

    # `groklab up` shares the cores among its workers through GROKLAB_TORCH_THREADS.
    torch.set_num_threads(threads or os.cpu_count() or 1)


def run_checkpoint_dir(settings: Settings, run_id: int) -> Path:
    # Only the integer run id goes into the path: nothing user-supplied names a file.
    return settings.resolved_checkpoint_dir / str(int(run_id))


def _start_from_parent(settings: Settings, run_id: int, parent_run_id: int) -> None:
    """A forked run starts from its parent's final checkpoint and history (unless resuming)."""
    own = run_checkpoint_dir(settings, run_id)
    if (own / CHECKPOINT_FILE).exists():
        return
    own.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_checkpoint_dir(settings, parent_run_id) / CHECKPOINT_FILE, own / ".parent.tmp")
    os.replace(own / ".parent.tmp", own / CHECKPOINT_FILE)
    with session_scope(settings.resolved_database_url) as session:
        forks.copy_parent_points(session, parent_run_id, run_id)


def _send(run_ids: list[int]) -> None:
    settings = get_settings()
    for run_id in run_ids:
        enqueue_run(app, run_id)
    with session_scope(settings.resolved_database_url) as session:
        leases.mark_enqueued(session, run_ids)


@app.task(name=TRAIN_RUN_TASK, bind=True)
def train_run(self, run_id: int) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    url = settings.resolved_database_url
    worker_name = self.request.hostname or "worker"
    with session_scope(url) as session:
        lease = leases.claim_run(session, run_id, worker=worker_name, lease_seconds=settings.lease_seconds)
        if lease is None:
            log.info("run %s is not claimable (taken, cancelled or finished); skipping", run_id)
            return "skipped"
        run = run_store.get_run(session, run_id)
        spec_data, parent_run_id = run.spec, run.parent_run_id

    # Imported here so that the api, which shares this package's Celery app, never loads torch.
    from engine.spec import RunSpec
    from engine.train import train_run as train_engine_run

    spec = RunSpec.model_validate(spec_data)
    if spec.checkpoint_every is None:
        # Checkpoints bound what a lost worker costs; the spec may ask for its own interval.
        every = max(spec.resolved_eval_every, spec.total_steps // CHECKPOINTS_PER_RUN)
        spec = spec.model_copy(update={"checkpoint_every": every})
    _set_torch_threads(settings.torch_threads)
    sink = DatabaseMetricSink(
        url,
        lease,
        lease_seconds=settings.lease_seconds,
        flush_seconds=settings.metric_flush_seconds,
        flush_points=settings.metric_flush_points,
    )

    def cancel_requested() -> bool:
        try:
            with session_scope(url) as session:
                return run_store.is_cancel_requested(session, run_id)
        except Exception:
            return False  # a database outage is not a cancel; the sink keeps the points

    check_cancel = _throttled(cancel_requested, settings.cancel_poll_seconds)

    def should_stop() -> bool:
        return sink.lease_lost or _worker_shutting_down() or check_cancel()

    try:
        if parent_run_id is not None:
            _start_from_parent(settings, run_id, parent_run_id)
        result = train_engine_run(
            spec,
            sink,
            checkpoint_dir=run_checkpoint_dir(settings, run_id),
            should_stop=should_stop,
            device=None if settings.device == "auto" else settings.device,
        )
        sink.flush()
    except Exception as exc:
        log.exception("run %s failed", run_id)
        sink.flush()
        return _finish(url, lease, run_store.FAILED, error=f"{type(exc).__name__}: {exc}")

    if sink.lease_lost:
        return "lease-lost"
    if result.stopped and _worker_shutting_down() and not cancel_requested():
        with session_scope(url) as session:
            released = leases.release_to_queue(session, lease, reason=f"{worker_name} shut down; re-queued")
        if released:
            _send([run_id])
        log.info("run %s checkpointed at step %s and re-queued (worker shutting down)", run_id, result.final_step)
        return run_store.QUEUED
    status = run_store.CANCELLED if result.stopped else run_store.SUCCEEDED
    log.info("run %s %s at step %s (%s points)", run_id, status, result.final_step, sink.points_written)
    return _finish(url, lease, status)


def _finish(url: str, lease: leases.Lease, status: str, error: str | None = None) -> str:
    with session_scope(url) as session:
        if not leases.finish(session, lease, status=status, error=error):
            return "lease-lost"
        if status == run_store.SUCCEEDED:
            children = forks.waiting_children(session, lease.run_id)
        else:
            forks.fail_children(session, lease.run_id, parent_status=status)
            children = []
    if children:
        _send(children)
    return status
