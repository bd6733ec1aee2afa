"""kombu's filesystem transport, consuming a worker's queues in the order given.

Redis reads the `queue_order_strategy` transport option ("priority": always try the queues in the
order the worker consumes them); kombu's other virtual transports, the filesystem one among them,
ignore it (kombu 5.7: `virtual.Channel._reset_cycle` always builds a round-robin `FairCycle`), so a
worker of the embedded default would take a long run from the normal queue right after a short
one even with more short runs waiting. This Channel honours the same option, so both brokers
consume the priority queue first (worker.celery_config).

It also names message files so that their order is the order they were sent: kombu names a file
`{monotonic milliseconds}_{uuid4}.{queue}.msg` and takes the files in sorted order, so two messages
sent in the same millisecond are taken in a random order (the uuid's), and the unpadded millisecond
count sorts 10,000,000 before 9,999,999 (about 2.8 hours after boot). Here the time is the monotonic
clock in nanoseconds, zero-padded to a fixed width. Everything else is kombu's transport.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps
from kombu.utils.scheduling import FairCycle


class _InOrder(FairCycle):
    """FairCycle that starts every get at the first queue instead of after the last one used."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """kombu's _put under a file name that sorts in the order of sending (see the module's docstring)."""
        path = os.path.join(self.data_folder_out, f"{time.monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg")
        try:
            with open(path, "wb", buffering=0) as file:
                filesystem.lock(file, filesystem.LOCK_EX)
                try:
                    file.write(str_to_bytes(dumps(payload)))
                finally:
                    filesystem.unlock(file)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _reset_cycle(self) -> None:
        options = self.connection.client.transport_options
        if options.get("queue_order_strategy") == "priority":
            self._cycle = _InOrder(self._get_and_deliver, self._active_queues, filesystem.Empty)
        else:
            super()._reset_cycle()


class Transport(filesystem.Transport):
    Channel = Channel
