"""Prometheus counters a worker exposes: optimizer steps trained and metric points written.

The worker's metric sink and task call `record_progress` and `record_points_written`; the worker
serves these (and the process metrics) on GROKLAB_WORKER_METRICS_PORT through
`start_metrics_server`. Prometheus turns the counters into steps/s and points/s with rate().
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

RUN_STEPS = Counter("groklab_run_steps", "Optimizer steps trained by this worker.")
POINTS_WRITTEN = Counter("groklab_metric_points_written", "Metric points this worker wrote to the database.")

_last_progress: tuple[int, int] | None = None


def record_progress(run_id: int, step: int) -> None:
    """Counts the steps since this run's previous report.

    A run's first report only sets the baseline, so a run resumed from a checkpoint at step
    50,000 does not count 50,000 steps this worker never trained.
    """
    global _last_progress
    if _last_progress is not None and _last_progress[0] == run_id and step > _last_progress[1]:
        RUN_STEPS.inc(step - _last_progress[1])
    _last_progress = (run_id, step)


def record_points_written(count: int) -> None:
    if count > 0:
        POINTS_WRITTEN.inc(count)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serves /metrics from a daemon thread of this process."""
    start_http_server(port, addr=addr)
