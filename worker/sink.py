"""A MetricSink that writes a run's points to the database in batches, fenced by the run's lease.

Every flush renews the lease in the same transaction as the points, so a worker whose lease
moved on writes nothing. A database outage does not stop training: the points stay buffered
and the next write tries again; `flush` retries with backoff until they are written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from sqlalchemy.exc import OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from groklab import telemetry
from groklab.store.database import session_scope
from groklab.store.leases import Lease, LeaseLost, renew
from groklab.store.metric_writes import Point, write_points

log = logging.getLogger(__name__)


class DatabaseMetricSink:
    def __init__(
        self,
        database_url: str,
        lease: Lease,
        *,
        lease_seconds: float,
        flush_seconds: float,
        flush_points: int,
        outage_seconds: float = 600.0,
    ) -> None:
        self.database_url = database_url
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.flush_seconds = flush_seconds
        self.flush_points = flush_points
        self.outage_seconds = outage_seconds
        self.points_written = 0
        self.lease_lost = False
        self._buffer: list[Point] = []
        self._series_ids: dict[str, int] = {}
        self._step = 0
        self._last_flush = time.monotonic()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._buffer.extend((name, step, float(value)) for name, value in metrics.items())
        if len(self._buffer) >= self.flush_points:
            self._try_write()

    def progress(self, step: int, total_steps: int) -> None:
        self._step = step
        telemetry.record_progress(self.lease.run_id, step)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._try_write()

    def flush(self) -> None:
        """Write everything buffered, waiting out a database outage of up to outage_seconds.

        The engine calls this before each checkpoint, so training pauses (rather than risks
        points) while the database is away.
        """
        self._last_flush = time.monotonic()
        if self.lease_lost:
            return
        try:
            self._write_with_retry()
        except LeaseLost:
            self._lose_lease()

    def _try_write(self) -> None:
        """Write what is buffered; on a database error keep it for the next try."""
        self._last_flush = time.monotonic()
        if self.lease_lost:
            return
        try:
            self._write()
        except OperationalError as exc:
            log.warning(
                "run %s: database unavailable, %d points buffered: %s",
                self.lease.run_id, len(self._buffer), exc.orig,
            )  # fmt: skip
        except LeaseLost:
            self._lose_lease()

    def _lose_lease(self) -> None:
        log.warning("run %s: lease lost; this worker stops writing", self.lease.run_id)
        self.lease_lost = True

    def _write_with_retry(self) -> None:
        retrying = retry(
            retry=retry_if_exception_type(OperationalError),
            wait=wait_exponential(multiplier=0.2, max=10),
            stop=stop_after_delay(self.outage_seconds),
            reraise=True,
        )
        retrying(self._write)()

    def _write(self) -> None:
        try:
            with session_scope(self.database_url) as session:
                renew(session, self.lease, lease_seconds=self.lease_seconds)
                write_points(
                    session, self.lease.run_id, self._buffer, series_cache=self._series_ids, step=self._step
                )
        except BaseException:
            # Series ids learnt inside a rolled-back transaction may not exist.
            self._series_ids = {}
            raise
        self.points_written += len(self._buffer)
        telemetry.record_points_written(len(self._buffer))
        self._buffer = []
