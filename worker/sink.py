"""MetricSinks that write runs' points to the database in batches, fenced by each run's lease.

The runs trained as one ensemble share one MetricWriter: a flush writes every run's buffered
points in one transaction, not one per run. Every write renews each run's lease in that same
transaction, so a worker whose lease on a run moved on writes nothing more of that run; the
others are written all the same. A database outage does not stop training: the points stay
buffered and the next write tries again; `flush` retries with backoff until they are written.

A flush may come from the engine's checkpoint-writer thread while training logs more points
(engine.sink.MetricSink.flush): the buffers are taken under a lock, and one write runs at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from groklab import telemetry
from groklab.outages import DATABASE, OUTAGES
from groklab.store.database import session_scope
from groklab.store.leases import Lease, LeaseLost, renew
from groklab.store.metric_writes import Point, write_points

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Run:
    lease: Lease
    points: list[Point] = field(default_factory=list)  # buffered, not yet written
    step: int = 0  # the latest progress(), written with the points as the run's step
    written_step: int = -1
    series_ids: dict[str, int] = field(default_factory=dict)
    points_written: int = 0
    lease_lost: bool = False
    error: Exception | None = None  # a write of this run alone failed: raised from its sink's next call
    failed: bool = False  # ... and it is written no more, so that the others go on in one transaction


class MetricWriter:
    """Buffers the points of several runs and writes them all in one transaction per write."""

    def __init__(
        self,
        database_url: str,
        *,
        lease_seconds: float,
        flush_seconds: float,
        flush_points: int,
        outage_seconds: float = 600.0,
    ) -> None:
        self.database_url = database_url
        self.lease_seconds = lease_seconds
        self.flush_seconds = flush_seconds
        self.flush_points = flush_points
        self.outage_seconds = outage_seconds
        self._runs: list[_Run] = []
        self._buffers = threading.Lock()  # guards every run's points
        self._writing = threading.Lock()  # one write at a time
        self._last_flush = time.monotonic()

    def sink(self, lease: Lease) -> DatabaseMetricSink:
        """The sink of one more run, written together with the others."""
        return DatabaseMetricSink(self.database_url, lease, writer=self)

    def _add(self, lease: Lease) -> _Run:
        run = _Run(lease)
        self._runs.append(run)
        return run

    def log(self, run: _Run, step: int, metrics: Mapping[str, float]) -> None:
        with self._buffers:
            if not run.lease_lost:
                run.points.extend((name, step, float(value)) for name, value in metrics.items())
            full = len(run.points) >= self.flush_points
        if full:
            self.try_write()

    def progress(self, run: _Run, step: int) -> None:
        run.step = step
        telemetry.record_progress(run.lease.run_id, step)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.try_write()

    def flush(self) -> None:
        """Write every run's buffered points, waiting out a database outage of up to outage_seconds.

        The engine calls this before each checkpoint, so checkpoints wait (rather than risk
        points) while the database is away. A flush that finds nothing new since the last write
        (as each member's flush after the first of one checkpoint does) writes nothing.
        """
        self._last_flush = time.monotonic()
        with self._writing:  # after a write under way, which may have taken points and failed
            with self._buffers:
                changed = any(run.points or run.step != run.written_step for run in self._live_runs())
            if not changed:
                return
            retrying = retry(
                retry=retry_if_exception_type(OperationalError),
                wait=wait_exponential(multiplier=0.2, max=10),
                stop=stop_after_delay(self.outage_seconds),
                reraise=True,
            )
            retrying(self._write)()

    def try_write(self) -> None:
        """Write what is buffered; on a database error keep it for the next try. A write already
        under way (a flush on another thread) takes the place of this one rather than making
        training wait for it."""
        self._last_flush = time.monotonic()
        if not self._writing.acquire(blocking=False):
            return
        try:
            self._write()
        except OperationalError as exc:
            # Every flush interval during an outage lands here: the outage log says it once.
            points = sum(len(run.points) for run in self._runs)
            OUTAGES[DATABASE].failed(exc, f"writing {points} buffered points of runs {[run.lease.run_id for run in self._runs]}")
        else:
            OUTAGES[DATABASE].reachable()
        finally:
            self._writing.release()

    def _live_runs(self) -> list[_Run]:
        return [run for run in self._runs if not (run.lease_lost or run.failed)]

    def _write(self) -> None:
        """One transaction for every run whose lease holds; a run whose lease is gone is left out
        (its renewal changed nothing, so the transaction goes on without it). Another error
        leaves it to each run's own transaction to tell whose it is."""
        with self._buffers:
            batch = [(run, run.points, run.step) for run in self._live_runs()]
            for run in self._runs:
                run.points = []
        try:
            self._write_in_one_transaction(batch)
        except OperationalError:
            self._restore(batch)
            raise
        except Exception:
            self._restore(batch)
            self._write_run_by_run()

    def _write_in_one_transaction(self, batch: list[tuple[_Run, list[Point], int]]) -> None:
        written = []
        try:
            with session_scope(self.database_url) as session:
                for run, points, step in batch:
                    try:
                        renew(session, run.lease, lease_seconds=self.lease_seconds)
                    except LeaseLost:
                        self._lose_lease(run)
                        continue
                    write_points(session, run.lease.run_id, points, series_cache=run.series_ids, step=step)
                    written.append((run, points, step))
        except BaseException:
            for run, _, _ in batch:
                run.series_ids = {}  # ids learnt inside a rolled-back transaction may not exist
            raise
        for run, points, step in written:
            run.points_written += len(points)
            run.written_step = step
            telemetry.record_points_written(len(points))

    def _write_run_by_run(self) -> None:
        """After a combined write failed on something other than the database being away: each run
        in a transaction of its own, so the error stays with the run it belongs to (which fails,
        as its own sink's error failed it before runs shared a writer)."""
        for run in self._live_runs():
            with self._buffers:
                batch = [(run, run.points, run.step)]
                run.points = []
            try:
                self._write_in_one_transaction(batch)
            except OperationalError:
                self._restore(batch)
                raise
            except Exception as exc:
                self._restore(batch)
                run.error, run.failed = exc, True

    def _restore(self, batch: list[tuple[_Run, list[Point], int]]) -> None:
        """Put unwritten points back before those logged meanwhile, unless the run's lease is gone."""
        with self._buffers:
            for run, points, _ in batch:
                if not run.lease_lost:
                    run.points = points + run.points

    def _lose_lease(self, run: _Run) -> None:
        log.warning("run %s: lease lost; this worker stops writing", run.lease.run_id)
        with self._buffers:
            run.lease_lost = True
            run.points = []


class DatabaseMetricSink:
    """One run's sink: its points go through `writer` (shared with the other runs of its ensemble),
    or through a writer of its own."""

    flush_from_any_thread = True  # MetricWriter takes buffers under a lock

    def __init__(
        self,
        database_url: str,
        lease: Lease,
        *,
        lease_seconds: float | None = None,
        flush_seconds: float | None = None,
        flush_points: int | None = None,
        outage_seconds: float = 600.0,
        writer: MetricWriter | None = None,
    ) -> None:
        if writer is None:
            if lease_seconds is None or flush_seconds is None or flush_points is None:
                raise TypeError("a sink without a shared writer needs lease_seconds, flush_seconds and flush_points")
            writer = MetricWriter(
                database_url, lease_seconds=lease_seconds, flush_seconds=flush_seconds,
                flush_points=flush_points, outage_seconds=outage_seconds,
            )  # fmt: skip
        self.writer = writer
        self.lease = lease
        self._run = writer._add(lease)

    @property
    def database_url(self) -> str:
        return self.writer.database_url

    @database_url.setter
    def database_url(self, url: str) -> None:
        self.writer.database_url = url

    @property
    def lease_lost(self) -> bool:
        return self._run.lease_lost

    @property
    def points_written(self) -> int:
        return self._run.points_written

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.writer.log(self._run, step, metrics)
        self._raise_error()

    def progress(self, step: int, total_steps: int) -> None:
        self.writer.progress(self._run, step)
        self._raise_error()

    def flush(self) -> None:
        """Write every point of the writer's runs (engine.sink.MetricSink.flush; MetricWriter.flush)."""
        self.writer.flush()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._run.error = self._run.error, None
        if error is not None:
            raise error
