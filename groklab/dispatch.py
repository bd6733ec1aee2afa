"""Sending runs to the broker and reading what waits there: the one place that queues work.

A message goes to the task `worker.celery_config.TRAIN_RUNS_TASK`, which `worker/tasks.py`
defines; the Celery app both sides use is made by `worker.celery_config.make_celery`.

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
from sqlalchemy.orm import Session

from engine.packing import pack_runs
from engine.spec import RunSpec
from groklab.fair_share import is_short
from groklab.outages import BROKER, OUTAGES
from groklab.run_specs import run_spec
from groklab.store import database, leases
from groklab.store import runs as run_store
from worker.celery_config import TRAIN_RUNS_TASK, priority_queue, training_queues


def dispatch_runs(session: Session, app: Celery, run_ids: Sequence[int], *, ensemble_size: int, first: bool = False) -> list[int]:
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
