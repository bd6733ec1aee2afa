"""Sending runs to the broker and reading what waits there: the one place that queues work.

Everything that queues runs calls `dispatch_runs`: the api when an experiment is submitted, the
worker for runs it re-queues and for fork children whose parent succeeded, the reconciler for
runs the broker lost. The broker only carries run ids; a task reads everything else from the
database, so sending a run twice is harmless (only one worker wins its claim).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue
from sqlalchemy.orm import Session

from engine.packing import pack_runs
from engine.spec import RunSpec
from groklab.fair_share import is_short
from groklab.outages import BROKER, OUTAGES
from groklab.run_specs import run_spec
from groklab.settings import Settings
from groklab.store import database, leases
from groklab.store import runs as run_store

TRAIN_RUNS_TASK = "groklab.train_runs"


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


def dispatch_runs(
    session: Session, app: Celery, run_ids: Sequence[int], *, ensemble_size: int, first: bool = False
) -> list[int]:
    """Pack the queued runs, mark them enqueued, commit, then send one message per pack.

    A pack of short runs goes to the priority queue, others to the normal one; `first` sends them
    all to the priority queue (a run that gave way to a short one: groklab/fair_share.py).

    The commit comes first so that a worker taking a message finds its run, and so that a
    reconciler pass in between sees the runs as just sent and gives the messages
    `requeue_grace_seconds` to arrive instead of sending them again.

    The database is the source of truth and the broker only transport: when the broker cannot
    be reached the runs stay queued, the reconciler sends them once it answers, and this returns
    the runs it could not send (logged once per outage) instead of failing the caller's request.
    """
    budget = app.conf.get("short_run_parameter_steps", 0)
    packs = _packs(session, run_ids, ensemble_size)
    leases.mark_enqueued(session, list(run_ids))
    database.commit(session)
    for sent, (pack, specs) in enumerate(packs):
        queue = priority_queue(app.conf["task_default_queue"]) if first or all(is_short(s, budget) for s in specs) else None
        try:
            send_message(app, pack, queue=queue)
        except Exception as exc:  # whatever stopped the send (Redis down, a broker folder gone)
            OUTAGES[BROKER].failed(exc, f"sending runs {pack}")
            return [run_id for unsent, _ in packs[sent:] for run_id in unsent]
    if packs:
        OUTAGES[BROKER].reachable()
    return []


def _packs(session: Session, run_ids: Sequence[int], ensemble_size: int) -> list[tuple[list[int], list[RunSpec]]]:
    """Runs of one experiment that one worker can train as one batched ensemble (engine.packing),
    with their specs."""
    by_experiment: dict[int, list[tuple[int, RunSpec]]] = {}
    for run_id in run_ids:
        run = run_store.get_run(session, run_id)
        by_experiment.setdefault(run.experiment_id, []).append((run_id, run_spec(run)))
    packs = []
    for runs in by_experiment.values():
        packs += [
            ([runs[i][0] for i in pack], [runs[i][1] for i in pack])
            for pack in pack_runs([spec for _, spec in runs], ensemble_size)
        ]
    return packs


def send_message(app: Celery, run_ids: Sequence[int], *, queue: str | None = None) -> None:
    """One message for runs that one worker trains together, to `queue` (default: the normal
    queue); callers go through dispatch_runs."""
    app.send_task(TRAIN_RUNS_TASK, args=[list(run_ids)], queue=queue or app.conf["task_default_queue"])


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
    packs = waiting_packs(app, queue_name)
    if packs is None:
        return None
    return {run_id for pack in packs for run_id in pack}


def waiting_packs(app: Celery, queue_name: str) -> list[list[int]] | None:
    """The run ids of each training message waiting in the broker, the priority queue's first
    (training_queues), each queue in its order; None when the broker cannot be inspected (see
    pending_run_ids)."""
    messages = _training_messages(app, queue_name)
    if messages is None:
        return None
    return [run_ids for message in messages if (run_ids := _run_ids(_decode(message)))]


def queue_length(app: Celery, queue_name: str) -> int | None:
    """Task messages waiting in the broker's training queues; None when it cannot tell."""
    messages = _training_messages(app, queue_name)
    return None if messages is None else len(messages)


def _training_messages(app: Celery, queue_name: str) -> list[bytes] | None:
    found: list[bytes] = []
    for name in training_queues(queue_name):
        messages = _waiting_messages(app, name)
        if messages is None:
            return None
        found += messages
    return found


def _waiting_messages(app: Celery, queue_name: str) -> list[bytes] | None:
    """The raw messages in the queue, oldest first (a list in Redis, files for the filesystem broker)."""
    url = app.conf.broker_url or ""
    if url.startswith("filesystem://"):
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        # kombu names a message file "<time>_<uuid>.<queue>.msg" and takes the oldest name first.
        paths = sorted(p for p in folder.glob("*.msg") if p.name.partition(".")[2] == f"{queue_name}.msg")
        return [data for path in paths if (data := _read(path)) is not None]
    if url.startswith(("redis://", "rediss://")):
        with app.connection_for_read() as connection:
            # One try, so that a scrape or a reconciler pass during an outage does not hang.
            connection.ensure_connection(max_retries=1, timeout=1)
            # kombu pushes on the left and workers pop on the right: the oldest message is last.
            return list(reversed(connection.default_channel.client.lrange(queue_name, 0, -1)))
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # a worker took the message between the listing and the read
        return None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def _run_ids(message: Any) -> list[int]:
    if not isinstance(message, dict) or message.get("headers", {}).get("task") != TRAIN_RUNS_TASK:
        return []
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return [int(run_id) for run_id in args[0]] if args else []
