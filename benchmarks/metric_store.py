"""Metric store on PostgreSQL: ingest rate, downsampled reads, and a 20M-point table.

`python -m benchmarks.metric_store [--quick]` creates and drops its own databases next to the admin
database named by GROKLAB_TEST_PG_ADMIN (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.database import create_database, drop_database
from groklab.store.downsample import SeriesRef, bucket_width, downsample_buckets, fold_points
from groklab.store.metric_reads import select_series
from groklab.store.metric_writes import series_ids, write_points
from groklab.store.migrate import upgrade
from groklab.store.models import MetricPoint

ADMIN_URL = os.environ.get("GROKLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 5000  # the worker's default metric_flush_points


def new_runs(url: str, count: int) -> list[int]:
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session, name="bench", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)] * count
        )
        return [run.id for run in experiment.runs]


def curve(step: int, k: int) -> float:
    return math.exp(-step / 50_000) * (1 + 0.1 * math.sin(step * (k + 1) / 100))


def series_points(names: list[str], steps: int, first_step: int = 0) -> list[tuple[str, int, float]]:
    return [(name, step, curve(step, k)) for step in range(first_step, first_step + steps) for k, name in enumerate(names)]


def write_series(url: str, run_id: int, names: list[str], steps: int, batch: int = BATCH) -> float:
    """Points/s of write_points, the worker's path, in batches of `batch` points."""
    points = series_points(names, steps)
    cache: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(0, len(points), batch):
        with session_scope(url) as session:
            write_points(session, run_id, points[i : i + batch], series_cache=cache, step=points[i][1])
    return len(points) / (time.perf_counter() - started)


def staged_copy_upsert(session: Session, run_id: int, points: list[tuple[str, int, float]], cache: dict[str, int]) -> None:
    """The previous write path (without its latest_metrics update): binary COPY into a temporary
    table, INSERT ... ON CONFLICT from it, TRUNCATE; no rollups."""
    if not cache:
        cache.update(series_ids(session, run_id, {name for name, _, _ in points}))
    connection = session.connection().connection.driver_connection
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS metric_points_staging (series_id integer, step bigint, value double precision)"
        )
        with cursor.copy("COPY metric_points_staging FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int8", "float8"])
            for name, step, value in points:
                copy.write_row((cache[name], step, value))
        cursor.execute(
            "INSERT INTO metric_points SELECT * FROM metric_points_staging ORDER BY series_id, step "
            "ON CONFLICT (series_id, step) DO UPDATE SET value = EXCLUDED.value"
        )
        cursor.execute("TRUNCATE metric_points_staging")


def interleaved_ingest(url: str, run_ids: list[int], steps: int, first_step: int = 0) -> tuple[float, float]:
    """Points/s of write_points and of the previous path, batch by batch in turn (10 series each)."""
    names = [f"m{k}" for k in range(10)]
    points = series_points(names, steps, first_step)
    caches: list[dict[str, int]] = [{}, {}]
    spent = [0.0, 0.0]
    for i in range(0, len(points), BATCH):
        chunk = points[i : i + BATCH]
        for which in (0, 1):
            started = time.perf_counter()
            with session_scope(url) as session:
                if which == 0:
                    write_points(session, run_ids[0], chunk, series_cache=caches[0], step=chunk[0][1])
                else:
                    staged_copy_upsert(session, run_ids[1], chunk, caches[1])
            spent[which] += time.perf_counter() - started
    return len(points) / spent[0], len(points) / spent[1]


def one_insert_per_point(url: str, run_id: int, count: int) -> float:
    with session_scope(url) as session:
        series_id = series_ids(session, run_id, ["naive"])["naive"]
    started = time.perf_counter()
    with session_scope(url) as session:
        for step in range(count):
            statement = postgresql.insert(MetricPoint).values(series_id=series_id, step=step, value=0.5)
            session.execute(
                statement.on_conflict_do_update(index_elements=["series_id", "step"], set_={"value": statement.excluded.value})
            )
    return count / (time.perf_counter() - started)


def executemany_upsert(url: str, run_id: int, count: int) -> float:
    with session_scope(url) as session:
        series_id = series_ids(session, run_id, ["many"])["many"]
    statement = postgresql.insert(MetricPoint)
    statement = statement.on_conflict_do_update(index_elements=["series_id", "step"], set_={"value": statement.excluded.value})
    started = time.perf_counter()
    for i in range(0, count, BATCH):
        with session_scope(url) as session:
            rows = [{"series_id": series_id, "step": s, "value": 0.5} for s in range(i, min(i + BATCH, count))]
            session.execute(statement, rows)
    return count / (time.perf_counter() - started)


def p50_ms(action: Callable[[], Any], repeats: int) -> float:
    action()  # warm caches and the connection pool
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def buckets_in_sql(url: str, series: list[SeriesRef], end_step: int, max_points: int, start_step: int = 0) -> int:
    with session_scope(url) as session:
        return len(downsample_buckets(session, series, start_step=start_step, end_step=end_step, max_points=max_points))


def buckets_from_points(url: str, series: list[SeriesRef], end_step: int, max_points: int) -> int:
    """The previous read path: one GROUP BY over every point (what SQLite still does)."""
    width = bucket_width(0, end_step, max_points)
    with session_scope(url) as session:
        return len(fold_points(session, [s.id for s in series], 0, end_step, width))


def buckets_in_python(url: str, series: list[SeriesRef], end_step: int, max_points: int) -> int:
    """The baseline: fetch every point, fold min/max/mean/last per bucket in Python."""
    width = -(-(end_step + 1) // max_points)
    folded: dict[tuple[int, int], list[float]] = {}
    with session_scope(url) as session:
        rows = session.execute(
            text(
                "SELECT series_id, step, value FROM metric_points WHERE series_id = ANY(:ids) "
                "AND step BETWEEN 0 AND :end ORDER BY series_id, step"
            ),
            {"ids": [s.id for s in series], "end": end_step},
        )
        for series_id, step, value in rows:
            acc = folded.get((series_id, step // width))
            if acc is None:
                folded[series_id, step // width] = [1, value, value, value, value]
            else:
                acc[0] += 1
                acc[1] = min(acc[1], value)
                acc[2] = max(acc[2], value)
                acc[3] += value
                acc[4] = value
    return len(folded)


def vacuum(url: str) -> None:
    from groklab.store.database import make_engine

    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def bench_ingest_and_read(url: str, quick: bool) -> None:
    ingest_points = 200_000 if quick else 1_000_000
    naive_points = 5_000 if quick else 20_000
    run_id, staged_run, naive_run = new_runs(url, 3)
    rate, staged = interleaved_ingest(url, [run_id, staged_run], ingest_points // 10)
    rewrite, _ = interleaved_ingest(url, [run_id, staged_run], ingest_points // 50)
    many = executemany_upsert(url, naive_run, ingest_points // 5)
    naive = one_insert_per_point(url, naive_run, naive_points)
    print(f"ingest: write_points (COPY into metric_points + rollups, batches of {BATCH}): {rate:,.0f} points/s")
    print(
        f"        previous path (COPY to staging + upsert, no rollups), interleaved:  {staged:,.0f} points/s ({staged / rate:.2f}x write_points)"
    )
    print(f"        write_points re-writing existing steps (upsert + rollup recompute):  {rewrite:,.0f} points/s")
    print(
        f"        executemany upsert, same batches:                                   {many:,.0f} points/s ({rate / many:.1f}x slower)"
    )
    print(
        f"        one INSERT per point (baseline):                                    {naive:,.0f} points/s ({rate / naive:.0f}x slower)"
    )

    per_series = 200_000 if quick else 2_000_000
    [read_run] = new_runs(url, 1)
    names = [f"r{k}" for k in range(5)]
    started = time.perf_counter()
    load = write_series(url, read_run, names, per_series, batch=50_000)
    print(
        f"read:   loaded 5 x {per_series:,} points in {time.perf_counter() - started:.0f} s ({load:,.0f} points/s, batches of 50,000)"
    )
    vacuum(url)
    with session_scope(url) as session:
        series = select_series(session, [read_run], names)
    end = per_series - 1
    # Interleaved: one slow previous-path query between every few rollup ones.
    rollup_times: list[float] = []
    unaligned_times: list[float] = []
    points_times: list[float] = []
    buckets_in_sql(url, series, end, 1000)
    for round_ in range(9):
        rollup_times.append(timed(lambda: buckets_in_sql(url, series, end, 1000)))
        unaligned_times.append(timed(lambda: buckets_in_sql(url, series, end, 1000, start_step=7)))
        if round_ % 3 == 0:
            points_times.append(timed(lambda: buckets_from_points(url, series, end, 1000)))
    sql, unaligned, points = (statistics.median(t) * 1000 for t in (rollup_times, unaligned_times, points_times))
    python = p50_ms(lambda: buckets_in_python(url, series, end, 1000), 1 if not quick else 3)
    print(f"read:   5 series x {per_series:,} points -> 1,000 buckets from rollups: p50 {sql:.0f} ms")
    print(f"        same from step 7 (every bucket edge splits a 16-step block):  p50 {unaligned:.0f} ms")
    print(
        f"        previous path, GROUP BY over every point, interleaved:       p50 {points:.0f} ms ({points / sql:.0f}x slower)"
    )
    print(
        f"        fetch all points + downsample in Python (baseline):          p50 {python:.0f} ms ({python / sql:.0f}x slower)"
    )


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_big_table(url: str, quick: bool) -> None:
    runs, names, steps = (100, 10, 2000) if quick else (1000, 10, 2000)
    run_ids = new_runs(url, runs)
    metric_names = [f"m{k}" for k in range(names)]
    write_series(url, run_ids[0], metric_names, steps, batch=names * steps)
    vacuum(url)

    def query() -> int:
        with session_scope(url) as session:
            series = select_series(session, [run_ids[0]], metric_names)
        return buckets_in_sql(url, series, steps - 1, 1000)

    small = p50_ms(query, 21)
    started = time.perf_counter()
    for run_id in run_ids[1:]:
        write_series(url, run_id, metric_names, steps, batch=names * steps)
    load = time.perf_counter() - started
    vacuum(url)
    big = p50_ms(query, 21)
    with session_scope(url) as session:
        count = session.scalar(text("SELECT count(*) FROM metric_points"))
        points_size = session.scalar(text("SELECT pg_total_relation_size('metric_points')"))
        rollups_size = session.scalar(text("SELECT pg_total_relation_size('metric_rollups')"))
    print(
        f"table:  {count:,} points ({runs} runs x {names} metrics x {steps} steps), loaded at {(count - names * steps) / load:,.0f} points/s"
    )
    print(
        f"        one run's 10 series -> 1,000 buckets: p50 {big:.1f} ms vs {small:.1f} ms on a 1-run table ({big / small:.2f}x)"
    )
    print(
        f"        {(points_size + rollups_size) / count:.1f} bytes on disk per point: {points_size / count:.1f} points "
        f"(table + primary key) + {rollups_size / count:.1f} rollups (pg_total_relation_size / count)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the points")
    args = parser.parse_args()
    for bench in (bench_ingest_and_read, bench_big_table):
        name, url = create_database(ADMIN_URL, prefix="groklab_bench")
        try:
            upgrade(url)
            bench(url, args.quick)
        finally:
            drop_database(ADMIN_URL, name)


if __name__ == "__main__":
    main()
