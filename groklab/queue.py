"""The Celery application shared by the api (which sends) and the worker (which runs).

The broker only carries run ids; everything a task needs is read from the database.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from celery import Celery

from groklab.settings import Settings

TRAIN_RUNS_TASK = "groklab.train_runs"


def make_celery(settings: Settings) -> Celery:
    app = Celery("groklab", broker=settings.resolved_broker_url, set_as_current=False)
    transport_options: dict[str, object] = {}
    if settings.resolved_broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        # Redis hands an unacknowledged task to another worker after this long; runs can take
        # days, and the run lease (not the broker) is what detects a lost worker.
        transport_options = {"visibility_timeout": settings.broker_visibility_timeout}
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        # Long training tasks: take one message at a time and acknowledge it only when done,
        # so a worker that dies mid-run leaves its message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue_runs(app: Celery, run_ids: list[int]) -> None:
    """One message for runs that one worker trains together, as one batched ensemble."""
    app.send_task(TRAIN_RUNS_TASK, args=[list(run_ids)])


def broker_reachable(app: Celery, timeout: float = 2.0) -> bool:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False


def pending_run_ids(app: Celery, queue_name: str) -> set[int] | None:
    """Run ids with a message waiting in the broker for a worker to take it.

    Messages that a worker took but has not acknowledged do not count: their worker may be
    dead, and Redis would hand them out again only after the (days-long) visibility timeout.
    None when the broker cannot be inspected; the reconciler then re-sends only expired runs.
    """
    url = app.conf.broker_url or ""
    if url.startswith("filesystem://"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        return {run_id for path in folder.glob("*.msg") for run_id in _run_ids(_read(path))}
    if url.startswith(("redis://", "rediss://")):
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            waiting = client.lrange(queue_name, 0, -1)
        return {run_id for raw in waiting for run_id in _run_ids(json.loads(raw))}
    return None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}


def _run_ids(message: Any) -> list[int]:
    if not isinstance(message, dict) or message.get("headers", {}).get("task") != TRAIN_RUNS_TASK:
        return []
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return [int(run_id) for run_id in args[0]] if args else []
