"""The Celery application shared by the api (which sends) and the worker (which runs).

The broker only carries run ids; everything a task needs is read from the database.
"""

from __future__ import annotations

from celery import Celery

from groklab.settings import Settings

TRAIN_RUN_TASK = "groklab.train_run"


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


def enqueue_run(app: Celery, run_id: int) -> None:
    app.send_task(TRAIN_RUN_TASK, args=[run_id])


def broker_reachable(app: Celery, timeout: float = 2.0) -> bool:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False
