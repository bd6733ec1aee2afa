"""Server time of the dashboard's experiment page for a 200-run experiment, on PostgreSQL and SQLite.

`python -m benchmarks.experiment_page [--runs 200] [--points 1000] [--repeat 5]` stores an
experiment like the paper's Fig. 7 (10 sizes D x 20 seeds), each run's six series (test/train
accuracy, train/test loss, parameter norm, test margin) `--points` evaluations long, so that the
page's 1,000-bucket queries get one bucket a point. It then times, in process (no network), the
requests the page makes when it opens: the experiment with its runs, its analysis, the overlay's
query (GET /v1/experiments/{id}/overlay_query) and the one grouped metric query it returns, which
feeds the overlay charts (by D, seeds folded), plus the page's query with seeds one by one and the
runs listing sorted by final test accuracy.

Each request is timed with the answer cache off (GROKLAB_ANSWER_CACHE_BYTES=0: every open computes
everything, the baseline) and on: its first call (a finished experiment's first open) and the
median of the calls after it (every later open). Before the first open, the benchmark does what
the worker does as runs finish (timed): it keeps each run's analysis as the run succeeds, and the
overlay's default answer once the last one has (groklab/lifecycle/finish.py). The grouped query's
first open without that warm-up (the api computes and keeps the answer) is timed last, after
dropping the kept answer.
PostgreSQL is a database created next to GROKLAB_TEST_PG_ADMIN (default
postgresql://postgres@127.0.0.1:5432/test) and dropped after; SQLite a file in a temporary folder.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from groklab import analysis
from groklab.lifecycle.finish import keep_overlay_answer
from groklab.run_labels import analyse_stored_runs
from groklab.store import answer_cache, leases
from groklab.store import runs as run_store
from groklab.store.database import create_database, drop_database, session_scope
from groklab.store.downsample import bucket_width
from groklab.store.metric_writes import write_points
from groklab.store.migrate import upgrade

ADMIN_URL = os.environ.get("GROKLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
NAMES = ("test_acc", "train_acc", "train_loss", "test_loss", "param_norm", "test_margin")
EVAL_EVERY = 10


def spec(train_size: int, seed: int, points: int) -> dict[str, Any]:
    return {
        "task": {"op": "add", "p": 97, "train_size": train_size},
        "model": {"kind": "transformer", "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512},
        "optimizer": {"lr": 0.001, "weight_decay": 1.0},
        "phases": [{"steps": points * EVAL_EVERY}],
        "eval_every": EVAL_EVERY,
        "seed": seed,
    }


def curves(train_size: int, seed: int, points: int) -> list[tuple[str, int, float]]:
    rise = points * EVAL_EVERY * (0.2 + 3000 / (train_size * 10)) + seed * 50
    rows = []
    for i in range(points):
        step = i * EVAL_EVERY
        test = 1 / (1 + math.exp(-(step - rise) / 300))
        values = (test, min(1.0, step / 2000 + 0.1), 2 / (1 + step / 100), 3 * (1 - test) + 0.01, 40 - step / 1000, step / 5000)
        rows.extend((name, step, value) for name, value in zip(NAMES, values, strict=True))
    return rows


def store(url: str, runs: int, points: int) -> int:
    sizes = [1000 + 500 * k for k in range(max(1, runs // 20))]
    specs = [(size, seed) for size in sizes for seed in range(runs // len(sizes))]
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session,
            name="fig7",
            spec={},
            runs=[run_store.NewRun(spec=spec(d, s, points), total_steps=points * EVAL_EVERY) for d, s in specs],
        )
        experiment_id, run_ids = experiment.id, [run.id for run in experiment.runs]
    for run_id, (size, seed) in zip(run_ids, specs, strict=True):
        with session_scope(url) as session:
            lease = leases.claim_run(session, run_id, worker="bench", lease_seconds=600)
            assert lease is not None
            write_points(session, run_id, curves(size, seed, points))
            leases.finish(session, lease, status=run_store.SUCCEEDED)
    return experiment_id


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(first, median of the next `repeat`) milliseconds of calls."""
    times = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:])


def keep_analyses(url: str, experiment_id: int, cache_bytes: int) -> float:
    """What the worker does as each run succeeds (worker/tasks.py): analyse it into the answer
    cache. Milliseconds per run."""
    with session_scope(url) as session:
        runs = run_store.get_experiment(session, experiment_id).runs
        started = time.perf_counter()
        for run in runs:
            analyse_stored_runs(session, [run], analysis.Thresholds(), cache_bytes=cache_bytes)
        return (time.perf_counter() - started) * 1000 / len(runs)


PAGE = ("GET experiment (runs)", "GET analysis", "GET overlay query", "grouped query, seeds folded")
GROUPED = "grouped query, seeds folded"


def measure(label: str, url: str, runs: int, points: int, repeat: int) -> None:
    upgrade(url)
    started = time.perf_counter()
    experiment_id = store(url, runs, points)
    print(f"{label}: stored {runs} runs x {len(NAMES)} series x {points} points in {time.perf_counter() - started:.1f} s")
    baseline = time_requests(label, url, experiment_id, runs, points, repeat, cache_bytes=0)
    cached = time_requests(label, url, experiment_id, runs, points, repeat, cache_bytes=256 * 1024 * 1024)
    unwarmed = cached.pop("first open without the warm-up")[0]
    print(f"{label}: {'request':36s} {'cache off':>10s} {'first open':>11s} {'later opens':>12s} {'later / off':>12s}")
    for name, (first, median) in cached.items():
        off = baseline[name][1]
        print(f"{label}: {name:36s} {off:8.1f} ms {first:8.1f} ms {median:9.1f} ms {median / off:12.3f}")
    totals = [sum(times[name][k] for name in PAGE) for times, k in ((baseline, 1), (cached, 0), (cached, 1))]
    print(
        f"{label}: page (experiment + analysis + overlay query + grouped query): cache off {totals[0]:.0f} ms, "
        f"first open {totals[1]:.0f} ms, later opens {totals[2]:.0f} ms ({totals[2] / totals[0]:.3f} of cache off)"
    )
    without = totals[1] - cached[GROUPED][0] + unwarmed
    print(f"{label}: first open without the worker's warm-up (the api folds the grouped query): {without:.0f} ms")


def time_requests(
    label: str, url: str, experiment_id: int, runs: int, points: int, repeat: int, *, cache_bytes: int
) -> dict[str, tuple[float, float]]:
    """(first, median of later) milliseconds of each request the page makes, in process; with the
    cache on, after what the worker does as the runs finish."""
    os.environ.update(
        GROKLAB_DATABASE_URL=url, GROKLAB_AUTH="off", GROKLAB_RECONCILE_SECONDS="0",
        GROKLAB_ANSWER_CACHE_BYTES=str(cache_bytes),
    )  # fmt: skip
    from fastapi.testclient import TestClient

    from api.main import create_app
    from groklab.settings import get_settings

    get_settings.cache_clear()
    if cache_bytes:
        print(f"{label}: the worker's analysis of a run that succeeded: {keep_analyses(url, experiment_id, cache_bytes):.1f} ms")
        started = time.perf_counter()
        assert keep_overlay_answer(get_settings(), experiment_id) == "miss"
        print(f"{label}: the worker's overlay answer as the last run finished: {(time.perf_counter() - started) * 1000:.0f} ms")
    with TestClient(create_app()) as client:
        times, calls, outcomes = time_page(client, experiment_id, repeat)
        assert outcomes[0] == ("hit" if cache_bytes else None)  # the first open reads the worker's answer
        if cache_bytes:  # the first open as it was before the worker kept the overlay's answer
            with session_scope(url) as session:
                answer_cache.forget(session, experiment_id)
            started = time.perf_counter()
            assert calls[GROUPED]().headers["x-answer-cache"] == "miss"
            times["first open without the warm-up"] = ((time.perf_counter() - started) * 1000, math.nan)
        grouped = calls[GROUPED]().json()
        assert len(grouped["groups"]) == runs // 20 and grouped["group_by"] == ["task.train_size"]
        assert grouped["bucket_width"] == bucket_width(0, (points - 1) * EVAL_EVERY, 1000)
    get_settings.cache_clear()
    return times


def time_page(
    client: Any, experiment_id: int, repeat: int
) -> tuple[dict[str, tuple[float, float]], dict[str, Callable[[], Any]], list[str | None]]:
    """Each request in the order the page sends it: the metric queries are the ones the overlay's
    query answers (the default, then seeds one by one: 200 lines x 5 series get 100 buckets)."""
    overlay = f"/v1/experiments/{experiment_id}/overlay_query"
    queries: dict[str, Any] = {}
    outcomes: list[str | None] = []  # the grouped query's X-Answer-Cache, call by call

    def ok(response: Any) -> Any:
        assert response.status_code == 200, response.text
        return response

    def read_overlay() -> None:
        queries["folded"] = ok(client.get(overlay)).json()["query"]

    def grouped() -> Any:
        response = ok(client.post("/v1/metrics/query", json=queries["folded"]))
        outcomes.append(response.headers.get("x-answer-cache"))
        return response

    calls: dict[str, Callable[[], Any]] = {
        "GET experiment (runs)": lambda: ok(client.get(f"/v1/experiments/{experiment_id}")),
        "GET analysis": lambda: ok(client.get(f"/v1/experiments/{experiment_id}/analysis")),
        "GET overlay query": read_overlay,
        GROUPED: grouped,
        "grouped query, seeds one by one": lambda: ok(client.post("/v1/metrics/query", json=queries["each"])),
        "GET /v1/runs sort=-final_test_acc": lambda: ok(
            client.get("/v1/runs", params={"experiment_id": experiment_id, "sort": "-final_test_acc", "limit": 1000})
        ),
    }
    times = {}
    for name, call in calls.items():
        if name == "grouped query, seeds one by one":
            queries["each"] = ok(client.get(overlay, params={"seeds": "each"})).json()["query"]
        times[name] = timed(call, repeat)
    return times, calls, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    args = parser.parse_args()
    logging.disable(logging.INFO)  # one line a request would bury the table
    if args.only != "sqlite":
        name, url = create_database(ADMIN_URL, prefix="groklab_bench")
        try:
            measure("postgresql", url, args.runs, args.points, args.repeat)
        finally:
            drop_database(ADMIN_URL, name)
    if args.only != "postgresql":
        with tempfile.TemporaryDirectory() as folder:
            measure("sqlite", f"sqlite:///{folder}/groklab.db", args.runs, args.points, args.repeat)


if __name__ == "__main__":
    main()
