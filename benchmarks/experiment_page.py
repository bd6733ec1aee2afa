"""Server time of the dashboard's experiment page for a 200-run experiment, on PostgreSQL and SQLite.

`python -m benchmarks.experiment_page [--runs 200] [--points 1000] [--repeat 5]` stores an
experiment like the paper's Fig. 7 (10 sizes D x 20 seeds), each run's six series (test/train
accuracy, train/test loss, parameter norm, test margin) `--points` evaluations long, so that the
page's 1,000-bucket queries get one bucket a point. It then times, in process (no network), the
requests the page makes when it opens: the experiment with its runs, its analysis, and the one
grouped metric query that feeds the overlay charts (by D, seeds folded), plus the same query with
seeds one by one and the runs listing sorted by final test accuracy. PostgreSQL is a database
created next to GROKLAB_TEST_PG_ADMIN (default postgresql://postgres@127.0.0.1:5432/test) and
dropped after; SQLite a file in a temporary folder.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

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
            session, name="fig7", spec={}, runs=[run_store.NewRun(spec=spec(d, s, points), total_steps=points * EVAL_EVERY) for d, s in specs]
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
    """(median, best) milliseconds of `repeat` calls after one warm-up."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times)


def measure(label: str, url: str, runs: int, points: int, repeat: int) -> None:
    upgrade(url)
    started = time.perf_counter()
    experiment_id = store(url, runs, points)
    print(f"{label}: stored {runs} runs x {len(NAMES)} series x {points} points in {time.perf_counter() - started:.1f} s")
    os.environ["GROKLAB_DATABASE_URL"] = url
    os.environ["GROKLAB_AUTH"] = "off"
    os.environ["GROKLAB_RECONCILE_SECONDS"] = "0"
    from fastapi.testclient import TestClient

    from api.main import create_app
    from groklab.settings import get_settings

    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        query = {"experiment_id": experiment_id, "names": list(NAMES), "max_points": 1000}

        def ok(response: Any) -> Any:
            assert response.status_code == 200, response.text
            return response

        grouped = ok(client.post("/v1/metrics/query", json={**query, "group_by": ["task.train_size"]})).json()
        assert len(grouped["groups"]) == runs // 20
        assert grouped["bucket_width"] == bucket_width(0, (points - 1) * EVAL_EVERY, 1000)
        requests = {
            "GET experiment (runs)": lambda: ok(client.get(f"/v1/experiments/{experiment_id}")),
            "GET analysis": lambda: ok(client.get(f"/v1/experiments/{experiment_id}/analysis")),
            "grouped query, seeds folded": lambda: ok(client.post("/v1/metrics/query", json={**query, "group_by": ["task.train_size"]})),
            # The page asks for fewer buckets when lines x series x 1,000 would pass 100,000 rows
            # (compare.js): 200 lines x 6 series get 83.
            "grouped query, seeds one by one": lambda: ok(client.post("/v1/metrics/query", json={**query, "max_points": min(1000, 100_000 // (runs * len(NAMES))), "group_by": ["task.train_size", "seed"]})),
            "GET /v1/runs sort=-final_test_acc": lambda: ok(client.get("/v1/runs", params={"experiment_id": experiment_id, "sort": "-final_test_acc", "limit": 1000})),
        }
        page = 0.0
        for name, call in requests.items():
            try:
                median, best = timed(call, repeat)
            except AssertionError as exc:
                print(f"{label}: {name:36s} FAILED: {str(exc)[:160]}")
                continue
            if name in ("GET experiment (runs)", "GET analysis", "grouped query, seeds folded"):
                page += median
            print(f"{label}: {name:36s} median {median:8.1f} ms, best {best:8.1f} ms")
        print(f"{label}: page opens in {page:.0f} ms of server time (experiment + analysis + grouped query, medians)")
        print(f"{label}: grouped answer {len(grouped['rows']):,} rows ({len(grouped['groups'])} groups x {len(NAMES)} series x buckets)")
    get_settings.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    args = parser.parse_args()
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
