"""What the long-run features save: log-spaced evaluation's storage, and early stop's training.

`python -m benchmarks.long_runs [--skip-training]` prints, for a 10^7-step run:
- points per series and rows/bytes in PostgreSQL's metric_points (its table and index size, as
  pg_total_relation_size reports it, written with the metric store's own write path into a private
  server) for the log schedule at 1,000 points, the linear schedule at 1,000 points (every 10^4
  steps: blind to memorisation at ~200), and the linear schedule that resolves the first 116
  steps as the log one does (every step). The log and the sparse linear series are written; the
  dense one's size is the sparse one's bytes per point times its point count (10^7 points).
- the CI grokking sweep (examples/ci/grokking.json: P=47, weight decays 1 and 2, 2,500 steps) trained
  in this process twice, without and with stop_when test_acc >= 0.95 for 250 steps: the run-steps
  each used, and the fraction of the budget the early-stopped sweep spent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg
import torch

from engine.sink import MemorySink
from pydantic import TypeAdapter

from engine.experiments import ExperimentRequest, plan_experiment
from engine.spec import LogEvalSchedule, PhaseSpec, RunSpec, log_spaced_steps
from engine.train import train_run
from tests.local_servers import start_postgres
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from groklab.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10_000_000
SERIES = 15  # every evaluation logs 15 series (README, Metric series)
STOP_WHEN = [{"metric": "test_acc", "at_least": 0.95, "for_steps": 250}]


def stored_bytes(url: str, steps: list[int]) -> tuple[int, int]:
    """(rows, bytes) of metric_points after writing one run's SERIES series at `steps`."""
    with session_scope(url) as session:
        run_id = (
            run_store.create_experiment(session, name="long", spec={}, runs=[run_store.NewRun(spec={}, total_steps=STEPS)])
            .runs[0]
            .id
        )
    names = [f"series_{i}" for i in range(SERIES)]
    for start in range(0, len(steps), 2_000):
        with session_scope(url) as session:
            write_points(session, run_id, [(n, s, 0.5) for s in steps[start : start + 2_000] for n in names])
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE metric_points")
        rows = conn.execute("SELECT count(*) FROM metric_points").fetchone()[0]
        size = conn.execute("SELECT pg_total_relation_size('metric_points')").fetchone()[0]
        conn.execute("TRUNCATE metric_points, metric_rollups, metric_series CASCADE")
    return rows, size


def storage() -> None:
    log_steps = sorted(log_spaced_steps(STEPS, 1_000))
    linear_steps = list(range(0, STEPS + 1, STEPS // 1_000))
    log_spec = RunSpec(phases=[PhaseSpec(steps=STEPS)], eval_schedule=LogEvalSchedule(kind="log", points=1_000))
    assert log_spec.eval_step_count() == len(log_steps)
    postgres = start_postgres()
    try:
        database = "long_runs"
        with psycopg.connect(postgres.admin_url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
        upgrade(url)
        print(f"a {STEPS:,}-step run, {SERIES} series, PostgreSQL metric_points (rows, table + index bytes):")
        resolved = lambda steps: sum(s == i for i, s in enumerate(steps))  # noqa: E731
        log_rows, log_bytes = stored_bytes(url, log_steps)
        lin_rows, lin_bytes = stored_bytes(url, linear_steps)
        print(
            f"  log, 1,000 points:           {len(log_steps):>10,} points/series {log_rows:>12,} rows {log_bytes / 2**20:>9.2f} MiB"
            f"   first {resolved(log_steps)} steps all evaluated; first at or after 200: step {next(s for s in log_steps if s >= 200)}"
        )
        print(
            f"  linear, every 10,000:        {len(linear_steps):>10,} points/series {lin_rows:>12,} rows {lin_bytes / 2**20:>9.2f} MiB"
            f"   first evaluation after step 0: step {linear_steps[1]:,}"
        )
        dense = STEPS + 1
        print(
            f"  linear, every step:          {dense:>10,} points/series {dense * SERIES:>12,} rows {lin_bytes / lin_rows * dense * SERIES / 2**30:>9.2f} GiB (estimated)"
        )
    finally:
        postgres.remove()


def early_stop() -> None:
    torch.set_num_threads(1)
    example = json.loads((ROOT / "examples" / "ci" / "grokking.json").read_text())
    plan = plan_experiment(TypeAdapter(ExperimentRequest).validate_python(example), max_runs=100)
    budget = sum(p.spec.total_steps for p in plan)
    used = 0
    print(f"CI grokking sweep ({len(plan)} runs, {budget:,} run-steps), stop_when {STOP_WHEN}:")
    for planned in plan:
        spec = RunSpec.model_validate({**planned.spec.model_dump(), "stop_when": STOP_WHEN, "device": "cpu"})
        started = time.perf_counter()
        result = train_run(spec, MemorySink())
        stopped = result.stopped_early_at_step
        used += result.final_step
        print(
            f"  weight decay {spec.optimizer.weight_decay}: stopped at step {stopped} of {spec.total_steps:,}"
            f" ({time.perf_counter() - started:.0f} s)"
        )
    print(f"  run-steps used: {used:,} of {budget:,} = {used / budget:.1%} of the budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true", help="only the storage figures")
    args = parser.parse_args()
    storage()
    if not args.skip_training:
        early_stop()


if __name__ == "__main__":
    main()
