"""kombu's filesystem transport, consuming a worker's queues in the order given.

Redis reads the `queue_order_strategy` transport option ("priority": always try the queues in the
order the worker consumes them); kombu's other virtual transports, the filesystem one among them,
ignore it (kombu 5.7: `virtual.Channel._reset_cycle` always builds a round-robin `FairCycle`), so a
worker of the embedded default would take a long run from the normal queue right after a short
one even with more short runs waiting. This Channel honours the same option, so both brokers
consume the priority queue first (worker.celery_config); everything else is kombu's transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import filesystem
from kombu.utils.scheduling import FairCycle


class _InOrder(FairCycle):
    """FairCycle that starts every get at the first queue instead of after the last one used."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    def _reset_cycle(self) -> None:
        options = self.connection.client.transport_options
        if options.get("queue_order_strategy") == "priority":
            self._cycle = _InOrder(self._get_and_deliver, self._active_queues, filesystem.Empty)
        else:
            super()._reset_cycle()


class Transport(filesystem.Transport):
    Channel = Channel
