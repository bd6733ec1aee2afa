"""The control plane at fleet scale: the real stack (PostgreSQL, Redis, Celery worker processes,
the api over HTTP) with tiny real runs, at growing run counts in the database.

`python -m benchmarks.fleet [--sizes 1000,10000,50000] [--workers 8] [--minutes 40]`

It starts a private PostgreSQL and Redis on loopback ports, an api and `--workers` solo-pool
workers, then for each size: fills the database up to that many runs with old finished ones (500
per experiment, stored with the store's own functions, one in ten with 66 metric points: three
evaluations of 22 series), vacuums it as autovacuum leaves a lab's tables, times the listing, run
page, analysis and metric query routes with no worker busy (20 rounds), then submits a 500-run
experiment of P=5 runs of 20 steps and, while the workers train it, times the same routes again. It prints, per size: submission latency, runs
finished per second, each route's p50/p99 (and idle p50/max), the load average, the api's garbage
collections meanwhile (from its /metrics), metric points ingested per second, the reconciler's
pass time with the plan of each query it ran, and database bytes per million metric points. It stops by itself after `--minutes`, at the size it reached.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import func, select, update

from engine.experiments import PlannedRun
from engine.spec import RunSpec
from tests.local_servers import free_port, start_postgres, start_redis
from tests.services import wait_http
from groklab.reconciler import reconcile_once
from groklab.settings import Settings
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from groklab.store.migrate import upgrade
from groklab.store.models import Run, utcnow
from groklab.store.plans import captured_statements, explain, summary
from groklab.submission import stored_run
from worker.celery_config import make_celery

ROOT = Path(__file__).resolve().parents[1]
RUNS_PER_EXPERIMENT = 500
TINY: dict[str, Any] = {
    "task": {"op": "add", "p": 5, "train_fraction": 0.6},
    "model": {"kind": "transformer", "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16},
    "optimizer": {"lr": 0.01},
    "phases": [{"steps": 20}],
    "eval_every": 10,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fill(url: str, target: int) -> float:
    """Old finished runs until the database holds `target`; the seconds it took."""
    started = time.monotonic()
    spec = RunSpec.model_validate(TINY)
    names = list(spec.eval_metric_names())
    points = [(name, step, 0.5) for step in (0, 10, 20) for name in names]
    row = stored_run(PlannedRun(spec=spec))
    while (have := count_runs(url)) < target:
        n = min(RUNS_PER_EXPERIMENT, target - have)
        with session_scope(url) as session:
            experiment = run_store.create_experiment(session, name="old", spec=TINY, runs=[row] * n)
            session.execute(
                update(Run)
                .where(Run.experiment_id == experiment.id)
                .values(status=run_store.SUCCEEDED, step=20, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            # Points for one old run in ten: writing them run by run is what makes a fill slow.
            for run in experiment.runs[::10]:
                write_points(session, run.id, points)
    return time.monotonic() - started


def count_runs(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count(Run.id))))


def analysis_experiment(url: str, runs: int = 220) -> int:
    """A finished experiment of `runs` runs over training-set sizes, as the analysis reads one."""
    spec = RunSpec.model_validate(TINY)
    names = list(spec.eval_metric_names())
    planned = [
        stored_run(PlannedRun(spec=spec.model_copy(update={"task": spec.task.model_copy(update={"train_size": 5 + i % 10})})))
        for i in range(runs)
    ]
    with session_scope(url) as session:
        experiment = run_store.create_experiment(session, name="analysis", spec=TINY, runs=planned)
        session.execute(
            update(Run)
            .where(Run.experiment_id == experiment.id)
            .values(status=run_store.SUCCEEDED, step=20, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        for run in experiment.runs:
            write_points(session, run.id, [(name, step, 0.5) for step in (0, 10, 20) for name in names])
        return experiment.id


class Probe(threading.Thread):
    """Times the read routes round-robin until stopped."""

    def __init__(self, base_url: str, requests: dict[str, tuple[str, str, Any]]) -> None:
        super().__init__(daemon=True)
        self.base_url, self.requests = base_url, requests
        self.times: dict[str, list[float]] = {name: [] for name in requests}
        self.failures: dict[str, int] = {name: 0 for name in requests}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as http:
            while not self.stop.is_set():
                for name, (method, path, body) in self.requests.items():
                    started = time.perf_counter()
                    response = http.request(method, path, json=body)
                    elapsed = time.perf_counter() - started
                    if response.status_code == 200:
                        self.times[name].append(elapsed)
                    else:
                        self.failures[name] += 1


def explain_reconciler(settings: Settings, celery: Any) -> tuple[float, list[tuple[str, str]]]:
    """One reconciler pass's seconds, and each statement it ran with its plan."""
    url = settings.resolved_database_url
    with captured_statements(url) as seen:
        started = time.perf_counter()
        reconcile_once(settings, celery)
        elapsed = time.perf_counter() - started
    return elapsed, [(" ".join(sql.split())[:150], summary(explain(url, sql, params))) for sql, params in seen]


def database_bytes_per_million_points(libpq: str) -> tuple[int, float]:
    with psycopg.connect(libpq, autocommit=True) as conn:
        points = conn.execute("SELECT count(*) FROM metric_points").fetchone()[0]
        size = conn.execute(
            "SELECT pg_total_relation_size('metric_points') + pg_total_relation_size('metric_rollups') "
            "+ pg_total_relation_size('metric_series')"
        ).fetchone()[0]
    return points, size / max(points, 1) * 1e6


def measure(url: str, libpq: str, base_url: str, settings: Settings, celery: Any, workers: int, size: int) -> None:
    analysis_id = analysis_experiment(url)
    # A lab's tables have been through autovacuum; a just-filled one has not, and without the
    # visibility map it sets no read is index-only (the listing's run read: 23 ms, not 6).
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    with session_scope(url) as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == analysis_id).limit(200)))
        listed_experiment = session.scalar(select(Run.experiment_id).order_by(Run.id).limit(1))
    probe = Probe(
        base_url,
        {
            "GET /v1/experiments": ("GET", "/v1/experiments", None),
            "GET /v1/runs?experiment_id= (oldest)": ("GET", f"/v1/runs?experiment_id={listed_experiment}", None),
            "GET /v1/runs?experiment_id= (newest)": ("GET", f"/v1/runs?experiment_id={analysis_id}", None),
            "GET /v1/runs/{id}": ("GET", f"/v1/runs/{run_ids[0]}", None),
            "experiment analysis (220 runs)": ("GET", f"/v1/experiments/{analysis_id}/analysis", None),
            "metric query (200 runs, downsampled)": (
                "POST", "/v1/metrics/query", {"run_ids": run_ids, "names": ["test_acc", "train_loss"], "max_points": 50},
            ),
        },
    )  # fmt: skip
    idle_times = _idle_times(base_url, probe)
    spec = {**TINY, "name": f"fleet {size}", "seeds": list(range(RUNS_PER_EXPERIMENT))}
    with httpx.Client(base_url=base_url, timeout=120) as http:
        started = time.perf_counter()
        response = http.post("/v1/experiments", json=spec)
        submit_seconds = time.perf_counter() - started
        response.raise_for_status()
        experiment_id = response.json()["id"]
    gc_before, load_before = api_gc_pauses(base_url), os.getloadavg()[0]
    probe.start()
    finished, points, trained_seconds = _wait_for(url, experiment_id)
    probe.stop.set()
    probe.join()
    gc_after, load_after = api_gc_pauses(base_url), os.getloadavg()[0]
    reconcile_seconds, plans = explain_reconciler(settings, celery)
    total_points, per_million = database_bytes_per_million_points(libpq)

    print(f"\n== {count_runs(url):,} runs in the database, {workers} workers ==")
    print(f"submit a {RUNS_PER_EXPERIMENT}-run experiment: {submit_seconds * 1000:.0f} ms")
    print(f"finished {finished} runs in {trained_seconds:.1f} s: {finished / trained_seconds:.1f} runs/s")
    print(f"metric ingest while they ran: {points / trained_seconds:,.0f} points/s ({points:,} points)")
    print(f"load average (1 min) when they started / ended: {load_before:.1f} / {load_after:.1f}")
    for name, times in probe.times.items():
        if times:
            print(f"{name:42s} p50 {percentile(times, 0.5) * 1000:7.1f} ms  p99 {percentile(times, 0.99) * 1000:7.1f} ms"
                  f"  ({len(times)} requests, {probe.failures[name]} failed); idle p50 / max "
                  f"{percentile(idle_times[name], 0.5) * 1000:.1f} / {max(idle_times[name]) * 1000:.1f} ms")  # fmt: skip
    (full, full_s), (young, young_s) = (
        (gc_after[kind][0] - gc_before[kind][0], gc_after[kind][1] - gc_before[kind][1]) for kind in ("full", "young")
    )
    print(
        f"api garbage collection meanwhile: {full:.0f} full ({full_s * 1000:.0f} ms), {young:.0f} young ({young_s * 1000:.0f} ms)"
    )
    print(f"reconciler pass: {reconcile_seconds * 1000:.1f} ms; its queries:")
    for statement, plan in plans:
        print(f"  {statement}\n    -> {plan}")
    print(f"database: {total_points:,} metric points, {per_million / 2**20:.1f} MiB per million points")
    sys.stdout.flush()


def api_gc_pauses(base_url: str) -> dict[str, tuple[float, float]]:
    """(collections, seconds) of the api's garbage collector so far, from its /metrics: "full"
    (generation 2) and "young" (0 and 1)."""
    count, seconds = [0.0] * 3, [0.0] * 3
    for line in httpx.get(f"{base_url}/metrics", timeout=60).text.splitlines():
        name, _, rest = line.partition('{generation="')
        if name in ("groklab_gc_pauses_total", "groklab_gc_pause_seconds_total"):
            generation, _, value = rest.partition('"} ')
            (count if name == "groklab_gc_pauses_total" else seconds)[int(generation)] = float(value)
    return {"full": (count[2], seconds[2]), "young": (count[0] + count[1], seconds[0] + seconds[1])}


def _idle_times(base_url: str, probe: Probe) -> dict[str, list[float]]:
    """Seconds of each probe request in 20 rounds while no worker is busy."""
    idle_times: dict[str, list[float]] = {name: [] for name in probe.requests}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for _ in range(20):
            for name, (method, path, body) in probe.requests.items():
                started = time.perf_counter()
                http.request(method, path, json=body).raise_for_status()
                idle_times[name].append(time.perf_counter() - started)
    return idle_times


def _wait_for(url: str, experiment_id: int) -> tuple[int, int, float]:
    """(finished runs, their stored points, seconds) once the experiment's runs finished (or 900 s)."""
    submitted = time.monotonic()
    while True:
        with session_scope(url) as session:
            finished, points = session.execute(
                select(
                    func.count(Run.id).filter(Run.status.in_(run_store.FINISHED_STATUSES)),
                    func.coalesce(func.sum(Run.stored_points), 0),
                ).where(Run.experiment_id == experiment_id)
            ).one()
        points = int(points)
        if finished == RUNS_PER_EXPERIMENT or time.monotonic() - submitted > 900:
            return finished, points, time.monotonic() - submitted
        time.sleep(0.5)


def _start_fleet(
    url: str, redis_url: str, workers: int, logs: Path, processes: list[subprocess.Popen[bytes]], worker_nice: int | None
) -> str:
    """Start the workers (at `worker_nice`, or the setting's default) and the api (appended to
    `processes`); the api's base URL once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(
        GROKLAB_DATABASE_URL=url, GROKLAB_BROKER_URL=redis_url, GROKLAB_DATA_DIR=str(logs),
        GROKLAB_QUEUE_NAME="fleet", GROKLAB_TORCH_THREADS="1", GROKLAB_DEVICE="cpu",
        GROKLAB_RECONCILE_SECONDS="5", GROKLAB_MAX_RUNS_PER_EXPERIMENT="500", PYTHONUNBUFFERED="1",
        # The fill stores 100 experiments a minute, as no owner could submit them.
        GROKLAB_SUBMISSIONS_PER_MINUTE="1000000",
    )  # fmt: skip
    if worker_nice is not None:
        env["GROKLAB_WORKER_NICE"] = str(worker_nice)
    port = free_port()
    for i in range(workers):
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
             "--loglevel", "WARNING", "-n", f"fleet{i}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=ROOT, stdout=(logs / f"worker{i}.log").open("ab"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, stdout=(logs / "api.log").open("ab"), stderr=subprocess.STDOUT,
    ))  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{base_url}/healthz")
    return base_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=40.0, help="stop after this long, at the size reached")
    parser.add_argument("--worker-nice", type=int, default=None, help="the workers' GROKLAB_WORKER_NICE (default: the setting's)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    postgres, redis = start_postgres(), start_redis()
    processes: list[subprocess.Popen[bytes]] = []
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"groklab-fleet-{uuid.uuid4().hex[:6]}"
    logs.mkdir(parents=True)
    try:
        with psycopg.connect(postgres.admin_url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleet")
        url = postgres.url.rsplit("/", 1)[0] + "/fleet"
        libpq = url.replace("postgresql+psycopg://", "postgresql://")
        upgrade(url)
        base_url = _start_fleet(url, redis.url, args.workers, logs, processes, args.worker_nice)
        settings = Settings(database_url=url, broker_url=redis.url, queue_name="fleet", requeue_grace_seconds=30)
        celery = make_celery(settings)
        nice = Settings.model_fields["worker_nice"].default if args.worker_nice is None else args.worker_nice
        print(f"fleet: PostgreSQL + Redis + api + {args.workers} workers (nice {nice}) on {os.cpu_count()} cores; logs in {logs}")
        for size in (int(s) for s in args.sizes.split(",")):
            if time.monotonic() > deadline:
                print(f"\nstopped before {size:,} runs: past --minutes {args.minutes:g}")
                break
            filled = fill(url, size - RUNS_PER_EXPERIMENT - 220)
            print(f"\nfilled to {count_runs(url):,} runs in {filled:.0f} s")
            measure(url, libpq, base_url, settings, celery, args.workers, size)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.kill()
        postgres.remove()


if __name__ == "__main__":
    main()
