"""Workers take the priority queue first on both brokers (groklab.dispatch, groklab.filesystem_broker):
the order kombu hands messages to a consumer of the training queues, as a Celery worker consumes them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Consumer

from groklab.dispatch import send_message, waiting_packs
from groklab.settings import Settings
from tests.services import redis_url
from worker.celery_config import make_celery, priority_queue


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_a_worker_takes_every_priority_message_before_a_normal_one(broker: str, tmp_path: Path) -> None:
    queue = f"groklab-order-{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp_path, queue_name=queue, broker_url=None if broker == "filesystem" else redis_url())
    app = make_celery(settings)
    send_message(app, [1])
    send_message(app, [2], queue=priority_queue(queue))
    send_message(app, [3])
    send_message(app, [4], queue=priority_queue(queue))
    # Oldest first, the priority queue's first: the order a worker takes them.
    assert waiting_packs(app, queue) == [[2], [4], [1], [3]]

    taken: list[int] = []

    def take(body: object, message: object) -> None:
        taken.append(body[0][0][0])  # type: ignore[index]  (args, kwargs, embed); args = [run_ids]
        message.ack()  # type: ignore[attr-defined]

    with app.connection_for_read() as connection:
        # As a Celery worker of task_acks_late and prefetch 1: one message, acknowledged, then the next.
        consumer = Consumer(connection, queues=list(app.amqp.queues.consume_from.values()), callbacks=[take], accept=["json"])
        consumer.qos(prefetch_count=1)
        with consumer:
            while len(taken) < 4:
                connection.drain_events(timeout=10)
    # kombu's round-robin would take 2, then 1 (the other queue), then 4.
    assert taken == [2, 4, 1, 3]


def test_the_filesystem_broker_keeps_the_order_of_messages_sent_in_the_same_millisecond(tmp_path: Path) -> None:
    # kombu names a message file by the millisecond and a uuid4, so messages sent within one
    # millisecond were taken in the uuids' order: 40 sent back to back all but surely tie.
    queue = f"groklab-order-{uuid.uuid4().hex[:8]}"
    app = make_celery(Settings(data_dir=tmp_path, queue_name=queue))
    for run_id in range(40):
        send_message(app, [run_id])
    assert waiting_packs(app, queue) == [[run_id] for run_id in range(40)]
