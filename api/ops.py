"""Operations: Prometheus /metrics, per-route request latency, JSON request logs with run ids."""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Iterator

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import get_celery
from groklab.dispatch import queue_length
from groklab.json_logs import configure_logging, log_context
from groklab.settings import Settings, get_settings
from groklab.store import stats
from groklab.store.database import session_scope

log = logging.getLogger("groklab.http")
REQUEST_SECONDS = Histogram(
    "groklab_http_request_duration_seconds",
    "HTTP request latency by route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_RUN_PATH = re.compile(r"^/v1/runs/(\d+)(?:/|$)")
_EXPERIMENT_PATH = re.compile(r"^/v1/experiments/(\d+)(?:/|$)")


class RequestTelemetry:
    """Times each request under its route template (never the raw path: ids would explode the
    label set) and logs it as one JSON line with the run or experiment id from the path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        run, experiment = _RUN_PATH.match(path), _EXPERIMENT_PATH.match(path)
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with log_context(
            run_id=int(run.group(1)) if run else None,
            experiment_id=int(experiment.group(1)) if experiment else None,
        ):
            try:
                await self.app(scope, receive, send_status)
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                REQUEST_SECONDS.labels(scope["method"], route, str(status)).observe(seconds)
                log.info(
                    "%s %s %s",
                    scope["method"],
                    path,
                    status,
                    extra={"route": route, "status": status, "duration_ms": round(seconds * 1000, 2)},
                )


class StoreCollector(Collector):
    """Gauges read at scrape time: runs by status from the database, and the broker's backlog."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering asks for the names; without this it would call collect, and the database.
        yield GaugeMetricFamily("groklab_runs", "", labels=["status"])
        yield GaugeMetricFamily("groklab_queue_depth_runs", "")
        yield GaugeMetricFamily("groklab_broker_queue_length", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily("groklab_runs", "Runs by status, all owners.", labels=["status"])
        queued = GaugeMetricFamily("groklab_queue_depth_runs", "Runs waiting for a worker (queued in the database).")
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                counts = stats.count_runs_by_status(session)
        except Exception:  # a scrape during a database outage still serves the other metrics
            log.warning("metrics: cannot count runs", exc_info=True)
        else:
            for status, count in sorted(counts.items()):
                runs.add_metric([status], count)
            queued.add_metric([], counts.get("queued", 0))
            yield runs
            yield queued
        depth = broker_queue_length(self.settings)
        if depth is not None:
            broker = GaugeMetricFamily("groklab_broker_queue_length", "Task messages waiting in the broker's queue.")
            broker.add_metric([], depth)
            yield broker


def broker_queue_length(settings: Settings) -> int | None:
    try:
        return queue_length(get_celery(), settings.queue_name)
    except Exception:
        log.warning("metrics: cannot read the broker queue length", exc_info=True)
        return None


class GcPauses(Collector):
    """The garbage collector's pauses in this process, by generation: a full collection (2) stops
    every request in flight, and one over the whole heap took 60-200 ms (api/main.py freezes the
    objects loaded at start for that reason).

    Counted in plain attributes, not in a prometheus Histogram: a collection can start inside the
    Histogram's own (non-reentrant) lock, and observing from the callback would then deadlock."""

    def __init__(self) -> None:
        self.started = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self.started

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self.collect()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pauses = CounterMetricFamily("groklab_gc_pauses", "Garbage collections by generation.", labels=["generation"])
        seconds = CounterMetricFamily(
            "groklab_gc_pause_seconds", "Time spent in garbage collections by generation.", labels=["generation"]
        )
        for generation in range(3):
            pauses.add_metric([str(generation)], self.count[generation])
            seconds.add_metric([str(generation)], self.seconds[generation])
        yield pauses
        yield seconds
        frozen = GaugeMetricFamily("groklab_gc_frozen_objects", "Objects frozen at start, which collections skip.")
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen


_collector: StoreCollector | None = None
_gc_pauses: GcPauses | None = None


def install_ops(app: FastAPI) -> None:
    """JSON logs for this process, the request middleware and GET /metrics (no key needed,
    like /healthz: it carries counts only)."""
    global _collector, _gc_pauses
    settings = get_settings()
    configure_logging()
    if _collector is None:  # one per process: the registry refuses a second with the same names
        _collector = StoreCollector(settings)
        REGISTRY.register(_collector)
        _gc_pauses = GcPauses()
        REGISTRY.register(_gc_pauses)
        gc.callbacks.append(_gc_pauses.on_gc)
    app.add_middleware(RequestTelemetry)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
