"""The training task: claim a run in the database, train it with the engine, record the outcome."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from groklab.settings import get_settings
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.queue import TRAIN_RUN_TASK
from worker.celery_app import app
from worker.sink import DatabaseMetricSink

log = logging.getLogger(__name__)


def _throttled(check: Callable[[], bool], every_seconds: float) -> Callable[[], bool]:
    """Ask the database at most every `every_seconds`; the engine polls between every step."""
    last = time.monotonic()

    def should_stop() -> bool:
        nonlocal last
        now = time.monotonic()
        if now - last < every_seconds:
            return False
        last = now
        return check()

    return should_stop


def _set_torch_threads(threads: int | None) -> None:
    import torch

    if threads is None:
        # `groklab up` shares the cores among its workers through GROKLAB_TORCH_THREADS.
        threads = max(1, (os.cpu_count() or 1))
    torch.set_num_threads(threads)


@app.task(name=TRAIN_RUN_TASK, bind=True)
def train_run(self, run_id: int) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    url = settings.resolved_database_url
    worker_name = self.request.hostname or "worker"
    with session_scope(url) as session:
        if not run_store.claim_run(session, run_id, worker=worker_name):
            log.info("run %s is not queued any more; skipping", run_id)
            return "skipped"
        spec_data = run_store.get_run(session, run_id).spec

    # Imported here so that the api, which shares this package's Celery app, never loads torch.
    from engine.spec import RunSpec
    from engine.train import train_run as train_engine_run

    _set_torch_threads(settings.torch_threads)
    sink = DatabaseMetricSink(
        url,
        run_id,
        flush_seconds=settings.metric_flush_seconds,
        flush_points=settings.metric_flush_points,
    )

    def cancel_requested() -> bool:
        with session_scope(url) as session:
            return run_store.is_cancel_requested(session, run_id)

    try:
        result = train_engine_run(
            RunSpec.model_validate(spec_data),
            sink,
            checkpoint_dir=settings.resolved_checkpoint_dir / str(run_id),
            should_stop=_throttled(cancel_requested, settings.cancel_poll_seconds),
            device=None if settings.device == "auto" else settings.device,
        )
        sink.flush()
    except Exception as exc:
        log.exception("run %s failed", run_id)
        sink.flush()
        with session_scope(url) as session:
            run_store.finish_run(session, run_id, status=run_store.FAILED, error=f"{type(exc).__name__}: {exc}")
        return run_store.FAILED
    status = run_store.CANCELLED if result.stopped else run_store.SUCCEEDED
    with session_scope(url) as session:
        run_store.finish_run(session, run_id, status=status)
    log.info("run %s %s at step %s (%s points)", run_id, status, result.final_step, sink.points_written)
    return status
