"""Metric writes: batched idempotent upserts keyed by (run, name, step), and the run's latest values.

On PostgreSQL a batch goes in by binary COPY and its rollup blocks are merged (groklab/store/rollups.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from psycopg.errors import UniqueViolation
from sqlalchemy import Select, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from groklab.store import rollups
from groklab.store.models import MetricPoint, MetricRollup, MetricSeries, Run

Point = tuple[str, int, float]


def finite_or_none(value: float) -> float | None:
    """JSON and SQLite have no NaN: non-finite values are stored and served as null."""
    return value if math.isfinite(value) else None


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database: {dialect}")


def series_ids(session: Session, run_id: int, names: Iterable[str]) -> dict[str, int]:
    """Ids of the run's series with these names, creating the missing ones."""
    wanted = set(names)
    session.execute(
        _insert(session, MetricSeries)
        .values([{"run_id": run_id, "name": name} for name in sorted(wanted)])
        .on_conflict_do_nothing(index_elements=["run_id", "name"])
    )
    rows = session.execute(
        select(MetricSeries.name, MetricSeries.id).where(MetricSeries.run_id == run_id, MetricSeries.name.in_(wanted))
    )
    return {name: series_id for name, series_id in rows}


def write_points(
    session: Session,
    run_id: int,
    points: Sequence[Point],
    *,
    series_cache: dict[str, int] | None = None,
    step: int | None = None,
) -> None:
    """Upsert a batch of points in one statement and advance the run's step and latest values.

    Writing a (name, step) twice keeps the later value: a resumed run re-logs the steps after its
    last checkpoint, and those must not become duplicates.
    """
    cache = series_cache if series_cache is not None else {}
    missing = {name for name, _, _ in points} - cache.keys()
    if missing:
        cache.update(series_ids(session, run_id, missing))
    latest: dict[str, tuple[int, float]] = {}
    # Keyed by (series, step) so a batch that logs one step twice keeps its later value, as two
    # batches would; PostgreSQL's ON CONFLICT refuses to touch one row twice in a statement.
    rows: dict[tuple[int, int], float | None] = {}
    for name, point_step, value in points:
        rows[cache[name], point_step] = finite_or_none(value)
        if name not in latest or point_step >= latest[name][0]:
            latest[name] = (point_step, value)
    added = 0
    if rows:
        if session.get_bind().dialect.name == "postgresql":
            added = _write_points_postgresql(session, rows)
        else:
            added = _write_points_sqlite(session, rows)
    run = session.get(Run, run_id)
    if run is None:
        return
    merged = dict(run.latest_metrics or {})
    for name, (point_step, value) in latest.items():
        if name not in merged or point_step >= merged[name][0]:
            merged[name] = [point_step, finite_or_none(value)]
    # The owner's usage (groklab/store/quotas.py) sums this column instead of counting points.
    values: dict[str, Any] = {"latest_metrics": merged, "stored_points": Run.stored_points + added}
    if step is not None:
        values["step"] = step
    session.execute(update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False))


def delete_series(session: Session, run_ids: Select[tuple[int]]) -> None:
    """Delete the runs' series with every point and rollup block of them; points and rollups
    have no foreign key to cascade from (see MetricPoint), so this comes before the runs go."""
    series = select(MetricSeries.id).where(MetricSeries.run_id.in_(run_ids))
    for statement in (
        delete(MetricPoint).where(MetricPoint.series_id.in_(series)),
        delete(MetricRollup).where(MetricRollup.series_id.in_(series)),
        delete(MetricSeries).where(MetricSeries.run_id.in_(run_ids)),
    ):
        # Without synchronisation the ORM would ask for every deleted key back (RETURNING).
        session.execute(statement.execution_options(synchronize_session=False))


def _write_points_sqlite(session: Session, rows: dict[tuple[int, int], float | None]) -> int:
    """Insert the new points, then overwrite the re-logged ones; how many were new."""
    params = [{"series_id": key[0], "step": key[1], "value": value} for key, value in rows.items()]
    # Core, not the ORM's bulk insert: its result has no rowcount (sqlite3 sums it over the rows).
    connection = session.connection()
    added = connection.execute(
        _insert(session, MetricPoint.__table__).on_conflict_do_nothing(index_elements=["series_id", "step"]), params
    ).rowcount
    if added < len(rows):
        connection.execute(
            update(MetricPoint.__table__)
            .where(MetricPoint.series_id == bindparam("b_series"), MetricPoint.step == bindparam("b_step"))
            .values(value=bindparam("b_value")),
            [{"b_series": key[0], "b_step": key[1], "b_value": value} for key, value in rows.items()],
        )
    return added


def _write_points_postgresql(session: Session, rows: dict[tuple[int, int], float | None]) -> int:
    """Write the batch; how many of its points were new."""
    connection = session.connection().connection.driver_connection
    batch = _Batch.of(rows)
    with connection.cursor() as cursor:
        if _copy_new_points(cursor, batch):
            rollups.merge_new_points(cursor, *batch)
            return len(rows)
        added = _upsert_points(cursor, rows)
        rollups.recompute_blocks(cursor, rows.keys())
        return added


class _Batch(NamedTuple):
    """A batch of points as arrays sorted by (series, step); NaN stands for a null value."""

    series: np.ndarray  # int32
    steps: np.ndarray  # int64
    values: np.ndarray  # float64

    @classmethod
    def of(cls, rows: dict[tuple[int, int], float | None]) -> _Batch:
        n = len(rows)
        series = np.fromiter((key[0] for key in rows), np.int32, n)
        steps = np.fromiter((key[1] for key in rows), np.int64, n)
        values = np.fromiter((math.nan if value is None else value for value in rows.values()), np.float64, n)
        order = np.lexsort((steps, series))
        return cls(series[order], steps[order], values[order])


# COPY's binary format: a signature, then per row the field count and each field as (byte length,
# big-endian value), length -1 and no value for a null; a trailer of -1. Built with numpy, a batch
# goes out ~10x faster than through psycopg's write_row, one Python call per point.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_ROW = np.dtype(
    [("fields", ">i2"), ("series_len", ">i4"), ("series", ">i4"), ("step_len", ">i4"), ("step", ">i8"),
     ("value_len", ">i4"), ("value", ">f8")]
)  # fmt: skip
_COPY_NULL_ROW = np.dtype(_COPY_ROW.descr[:-1])


def _copy_rows(batch: _Batch, present: np.ndarray, dtype: np.dtype) -> bytes:
    records = np.empty(int(present.sum()), dtype)
    records["fields"], records["series_len"], records["step_len"] = 3, 4, 8
    records["series"], records["step"] = batch.series[present], batch.steps[present]
    if "value" in dtype.names:
        records["value_len"], records["value"] = 8, batch.values[present]
    else:
        records["value_len"] = -1
    return records.tobytes()


def _copy_new_points(cursor: Any, batch: _Batch) -> bool:
    """COPY the batch straight into metric_points; False, with nothing written, when one of its
    steps is there already.

    A worker's batches are new steps, so the binary COPY (several times an INSERT ... ON CONFLICT,
    benchmarks/metric_store.py) almost always succeeds; a resumed run re-logging steps fails it at the
    first existing point, and the savepoint lets the same transaction upsert the batch instead.
    """
    present = ~np.isnan(batch.values)
    data = _COPY_SIGNATURE + _copy_rows(batch, present, _COPY_ROW) + _copy_rows(batch, ~present, _COPY_NULL_ROW)
    cursor.execute("SAVEPOINT metric_points_copy")
    try:
        with cursor.copy("COPY metric_points (series_id, step, value) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data + _COPY_TRAILER)
    except UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT metric_points_copy")
        return False
    finally:
        cursor.execute("RELEASE SAVEPOINT metric_points_copy")
    return True


def _upsert_points(cursor: Any, rows: dict[tuple[int, int], float | None]) -> int:
    """Upsert the rows; how many were inserted (xmax is 0 on a row this statement inserted)."""
    cursor.execute(
        "WITH written AS (INSERT INTO metric_points (series_id, step, value) "
        "SELECT * FROM unnest(%s::int[], %s::bigint[], %s::float8[]) "
        "ON CONFLICT (series_id, step) DO UPDATE SET value = EXCLUDED.value RETURNING xmax = 0 AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted) FROM written",
        ([key[0] for key in rows], [key[1] for key in rows], list(rows.values())),
    )
    return int(cursor.fetchone()[0])
