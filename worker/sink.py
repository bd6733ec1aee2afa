"""A MetricSink that writes a run's points to the database in batches, never one per point."""

from __future__ import annotations

import time
from collections.abc import Mapping

from groklab.store.database import session_scope
from groklab.store.metrics import Point, write_points


class DatabaseMetricSink:
    def __init__(
        self, database_url: str, run_id: int, *, flush_seconds: float, flush_points: int
    ) -> None:
        self.database_url = database_url
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.flush_points = flush_points
        self.points_written = 0
        self._buffer: list[Point] = []
        self._series_ids: dict[str, int] = {}
        self._step = 0
        self._flushed_step = -1
        self._last_flush = time.monotonic()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._buffer.extend((name, step, float(value)) for name, value in metrics.items())
        if len(self._buffer) >= self.flush_points:
            self.flush()

    def progress(self, step: int, total_steps: int) -> None:
        self._step = step
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer and self._step == self._flushed_step:
            return
        with session_scope(self.database_url) as session:
            write_points(
                session, self.run_id, self._buffer, series_cache=self._series_ids, step=self._step
            )
        self.points_written += len(self._buffer)
        self._buffer = []
        self._flushed_step = self._step
