"""Server time of the dashboard's experiment page for a 200-run experiment, on PostgreSQL and SQLite.

`python -m benchmarks.experiment_page [--runs 200] [--points 1000] [--repeat 5]` stores an
experiment like the paper's Fig. 7 (10 sizes D x 20 seeds), each run's six series (test/train
accuracy, train/test loss, parameter norm, test margin) `--points` evaluations long, so that the
page's 1,000-bucket queries get one bucket a point. It then times, in process (no network), the
requests the page makes when it opens: the experiment with its runs, its analysis, and the one
grouped metric query that feeds the overlay charts (by D, seeds folded), plus the same query with
seeds one by one and the runs listing sorted by final test accuracy.

Each request is timed with the answer cache off (GROKLAB_ANSWER_CACHE_BYTES=0: every open computes
everything, the baseline) and on: its first call (a finished experiment's first open, which
computes and keeps the grouped answer; the runs' analyses were kept by the worker as each run
succeeded, timed here as it does it) and the median of the calls after it (every later open).
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
from groklab.run_labels import analyse_stored_runs
from groklab.store import leases
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


PAGE = ("GET experiment (runs)", "GET analysis", "grouped query, seeds folded")


def measure(label: str, url: str, runs: int, points: int, repeat: int) -> None:
    upgrade(url)
    started = time.perf_counter()
    experiment_id = store(url, runs, points)
    print(f"{label}: stored {runs} runs x {len(NAMES)} series x {points} points in {time.perf_counter() - started:.1f} s")
    baseline = time_requests(label, url, experiment_id, runs, points, repeat, cache_bytes=0)
    cached = time_requests(label, url, experiment_id, runs, points, repeat, cache_bytes=256 * 1024 * 1024)
    print(f"{label}: {'request':36s} {'cache off':>10s} {'first open':>11s} {'later opens':>12s} {'later / off':>12s}")
    for name, (first, median) in cached.items():
        off = baseline[name][1]
        print(f"{label}: {name:36s} {off:8.1f} ms {first:8.1f} ms {median:9.1f} ms {median / off:12.3f}")
    totals = [sum(times[name][k] for name in PAGE) for times, k in ((baseline, 1), (cached, 0), (cached, 1))]
    print(
        f"{label}: page (experiment + analysis + grouped query): cache off {totals[0]:.0f} ms, "
        f"first open {totals[1]:.0f} ms, later opens {totals[2]:.0f} ms ({totals[2] / totals[0]:.3f} of cache off)"
    )


def time_requests(
    label: str, url: str, experiment_id: int, runs: int, points: int, repeat: int, *, cache_bytes: int
) -> dict[str, tuple[float, float]]:
    """(first, median of later) milliseconds of each request the page makes, in process."""
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
    times = {}
    with TestClient(create_app()) as client:
        query = {"experiment_id": experiment_id, "names": list(NAMES), "max_points": 1000}

        def ok(response: Any) -> Any:
            assert response.status_code == 200, response.text
            return response

        requests = {
            "GET experiment (runs)": lambda: ok(client.get(f"/v1/experiments/{experiment_id}")),
            "GET analysis": lambda: ok(client.get(f"/v1/experiments/{experiment_id}/analysis")),
            "grouped query, seeds folded": lambda: ok(
                client.post("/v1/metrics/query", json={**query, "group_by": ["task.train_size"]})
            ),
            # The page asks for fewer buckets when lines x series x 1,000 would pass 100,000 rows
            # (compare.js): 200 lines x 6 series get 83.
            "grouped query, seeds one by one": lambda: ok(
                client.post(
                    "/v1/metrics/query",
                    json={
                        **query,
                        "max_points": min(1000, 100_000 // (runs * len(NAMES))),
                        "group_by": ["task.train_size", "seed"],
                    },
                )
            ),
            "GET /v1/runs sort=-final_test_acc": lambda: ok(
                client.get("/v1/runs", params={"experiment_id": experiment_id, "sort": "-final_test_acc", "limit": 1000})
            ),
        }
        for name, call in requests.items():
            times[name] = timed(call, repeat)
        grouped = ok(client.post("/v1/metrics/query", json={**query, "group_by": ["task.train_size"]})).json()
        assert len(grouped["groups"]) == runs // 20
        assert grouped["bucket_width"] == bucket_width(0, (points - 1) * EVAL_EVERY, 1000)
    get_settings.cache_clear()
    return times


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
