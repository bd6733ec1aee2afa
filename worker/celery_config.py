"""The Celery app as the api and the workers both make it: the broker, the training queues, and
the name of the training task (`worker/tasks.py` defines it, `groklab/dispatch.py` sends to it).

The api imports this to send; it imports no torch and nothing of the worker's own start-up
(that is `worker/celery_app.py`, the worker's entry point).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from groklab.settings import Settings

TRAIN_RUNS_TASK = "groklab.train_runs"
"""The task's name on the wire: queued messages carry it, so it stays as it is wherever the task lives."""


def priority_queue(queue_name: str) -> str:
    """The queue workers take from first: short runs, and the runs that gave way to them
    (groklab/fair_share.py). `queue_name` itself carries the long runs."""
    return f"{queue_name}.priority"


def training_queues(queue_name: str) -> list[str]:
    """Both training queues, in the order every worker consumes them."""
    return [priority_queue(queue_name), queue_name]


def make_celery(settings: Settings) -> Celery:
    app = Celery("groklab", broker=settings.resolved_broker_url, set_as_current=False)
    # A worker tries its queues in the order of task_queues (the priority queue first) each time it
    # takes a message; kombu's Redis transport reads this option, groklab.filesystem_broker makes
    # the filesystem transport read it too.
    transport_options: dict[str, object] = {"queue_order_strategy": "priority"}
    transport: str | None = None
    if settings.resolved_broker_url.startswith("filesystem://"):
        transport = "groklab.filesystem_broker:Transport"
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options |= {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        # Redis hands an unacknowledged task to another worker after this long; runs can take
        # days, and the run lease (not the broker) is what detects a lost worker.
        transport_options |= {"visibility_timeout": settings.broker_visibility_timeout}
    app.conf.update(
        broker_transport=transport,
        broker_transport_options=transport_options,
        # Outages of the broker are waited out, never a reason to leave the fleet: retry the
        # connection at start and after a loss for ever (Celery's default gives up after 100
        # tries and the worker shuts down, silently shrinking a production fleet by a GPU).
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # A training task keeps going through a broker outage: its run's lease and checkpoints are
        # in the database, and cancelling it would throw away up to a checkpoint interval of
        # work. Said explicitly because Celery 6 turns the default around (it warns at every loss).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=settings.queue_name,
        task_queues=[Queue(name, routing_key=name) for name in training_queues(settings.queue_name)],
        task_ignore_result=True,
        # Long training tasks: take one message at a time and acknowledge it only when done,
        # so a worker that dies mid-run leaves its message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    # Read by dispatch_runs to route each pack (a setting of the process that sends, like the queues).
    app.conf.short_run_parameter_steps = settings.short_run_parameter_steps
    return app
