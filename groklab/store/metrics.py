"""Metric series: batched idempotent writes keyed by (run, name, step), and range reads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from psycopg.errors import UniqueViolation
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from groklab.store.models import MetricPoint, MetricSeries, Run

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
        select(MetricSeries.name, MetricSeries.id).where(
            MetricSeries.run_id == run_id, MetricSeries.name.in_(wanted)
        )
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
    if rows:
        if session.get_bind().dialect.name == "postgresql":
            _write_points_postgresql(session, rows)
        else:
            statement = _insert(session, MetricPoint)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=["series_id", "step"], set_={"value": statement.excluded.value}
                ),
                [{"series_id": key[0], "step": key[1], "value": value} for key, value in rows.items()],
            )
    run = session.get(Run, run_id)
    if run is None:
        return
    merged = dict(run.latest_metrics or {})
    for name, (point_step, value) in latest.items():
        if name not in merged or point_step >= merged[name][0]:
            merged[name] = [point_step, finite_or_none(value)]
    values: dict[str, Any] = {"latest_metrics": merged}
    if step is not None:
        values["step"] = step
    session.execute(
        update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False)
    )


ROLLUP_WIDTHS = (16, 64, 256, 1024, 4096, 16384, 65536)
"""Block widths of metric_rollups: 4 blocks of one width make one block of the next. A bucket is
cut into at most 3 blocks per width at each edge (~10 blocks per bucket in benchmarks/metrics.py);
with 16 to one, as migration 0003 had them, a read folded twice as many rows."""


def _write_points_postgresql(session: Session, rows: dict[tuple[int, int], float | None]) -> None:
    connection = session.connection().connection.driver_connection
    batch = _Batch.of(rows)
    with connection.cursor() as cursor:
        if _copy_new_points(cursor, batch):
            _merge_rollups_of_new_points(cursor, batch)
        else:
            _upsert_points(cursor, rows)
            _recompute_rollups(cursor, rows.keys())


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
    benchmarks/metrics.py) almost always succeeds; a resumed run re-logging steps fails it at the
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


def _upsert_points(cursor: Any, rows: dict[tuple[int, int], float | None]) -> None:
    cursor.execute(
        "INSERT INTO metric_points (series_id, step, value) "
        "SELECT * FROM unnest(%s::int[], %s::bigint[], %s::float8[]) "
        "ON CONFLICT (series_id, step) DO UPDATE SET value = EXCLUDED.value",
        ([key[0] for key in rows], [key[1] for key in rows], list(rows.values())),
    )


# Points that are all new only add to the blocks they fall in: count, sum, min and max merge with
# the stored block, and the last value is the one at the higher step. So the batch is folded into
# its narrowest blocks here (a few hundred rows for 5,000 points), and one statement folds those
# into every wider width and merges them all in.
_MERGE_ROLLUPS = (
    "WITH narrowest AS (SELECT * FROM unnest(%(series)s::int[], %(blocks)s::bigint[], %(counts)s::int[], "
    "%(value_counts)s::int[], %(mins)s::float8[], %(maxes)s::float8[], %(sums)s::float8[], "
    "%(last_steps)s::bigint[], %(last_values)s::float8[]) "
    "AS t (series_id, block, count, value_count, min, max, sum, last_step, last_value)), "
    "blocks AS (SELECT %(narrowest)s AS width, * FROM narrowest UNION ALL "
    "SELECT w.width, n.series_id, n.block / (w.width / %(narrowest)s), sum(n.count), sum(n.value_count), "
    "min(n.min), max(n.max), sum(n.sum), max(n.last_step), "
    "(max(ARRAY[n.last_step::float8, n.last_value]))[2] "
    "FROM narrowest n CROSS JOIN unnest(%(wider)s::int[]) AS w (width) GROUP BY 1, 2, 3) "
    "INSERT INTO metric_rollups AS r "
    "(width, series_id, block, count, value_count, min, max, sum, last_step, last_value) "
    "SELECT * FROM blocks "
    "ON CONFLICT (series_id, width, block) DO UPDATE SET count = r.count + EXCLUDED.count, "
    "value_count = r.value_count + EXCLUDED.value_count, min = least(r.min, EXCLUDED.min), "
    "max = greatest(r.max, EXCLUDED.max), "
    "sum = CASE WHEN r.sum IS NULL THEN EXCLUDED.sum WHEN EXCLUDED.sum IS NULL THEN r.sum "
    "ELSE r.sum + EXCLUDED.sum END, "
    "last_step = greatest(r.last_step, EXCLUDED.last_step), "
    "last_value = CASE WHEN EXCLUDED.last_step > r.last_step THEN EXCLUDED.last_value ELSE r.last_value END"
)


def _merge_rollups_of_new_points(cursor: Any, batch: _Batch) -> None:
    blocks = batch.steps // ROLLUP_WIDTHS[0]
    change = np.flatnonzero((batch.series[1:] != batch.series[:-1]) | (blocks[1:] != blocks[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(blocks)])) - 1
    present = ~np.isnan(batch.values)
    value_counts = np.add.reduceat(present.astype(np.int64), starts)
    # fmin/fmax skip NaN (null) values; a block of nulls only stays NaN, sent as NULL.
    sums = np.add.reduceat(np.where(present, batch.values, 0.0), starts)
    sums[value_counts == 0] = math.nan
    cursor.execute(
        _MERGE_ROLLUPS,
        {
            "series": array_literal(batch.series[starts]),
            "blocks": array_literal(blocks[starts]),
            "counts": array_literal(ends - starts + 1),
            "value_counts": array_literal(value_counts),
            "mins": array_literal(np.fmin.reduceat(batch.values, starts)),
            "maxes": array_literal(np.fmax.reduceat(batch.values, starts)),
            "sums": array_literal(sums),
            "last_steps": array_literal(batch.steps[ends]),
            "last_values": array_literal(batch.values[ends]),
            "narrowest": ROLLUP_WIDTHS[0],
            "wider": array_literal(ROLLUP_WIDTHS[1:]),
        },
    )


def array_literal(values: np.ndarray | Sequence[int]) -> str:
    """A PostgreSQL array literal, NaN as NULL: psycopg adapts a list element by element, several
    times slower for thousands of values. repr() of a float reads back as the same float8."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return "{" + ",".join("NULL" if math.isnan(x) else repr(x) for x in values.tolist()) + "}"
        values = values.tolist()
    return "{" + ",".join(map(str, values)) + "}"


# Each statement recomputes whole blocks, so it is right whether the batch added points or
# overwrote one that was a block's min or max. It reads the points other transactions committed,
# so two writers of one series must not overlap: the worker's flush first renews the run's lease,
# an UPDATE of the run's row, which makes the flushes of one run take turns. The blocks come as runs of consecutive blocks
# (a worker's batch is one run per series), read with one index range scan each; a block's last
# value is the point at its last step, one primary-key probe rather than an ordered aggregate.
_RECOMPUTE_ROLLUPS = (
    "INSERT INTO metric_rollups "
    "(series_id, width, block, count, value_count, min, max, sum, last_step, last_value) "
    "SELECT b.*, p.value FROM (SELECT t.series_id, %(width)s, "
    "floor(c.{position}::float8 / %(ratio)s)::bigint, {aggregates} "
    "FROM unnest(%(series)s::int[], %(first)s::bigint[], %(last)s::bigint[]) AS t (series_id, first, last) "
    "JOIN {children} c ON c.series_id = t.series_id{child_width} "
    "AND c.{position} BETWEEN t.first * %(ratio)s AND t.last * %(ratio)s + %(ratio)s - 1 "
    "GROUP BY 1, 2, 3) AS b (series_id, width, block, count, value_count, min, max, sum, last_step) "
    "JOIN metric_points p ON p.series_id = b.series_id AND p.step = b.last_step "
    "ON CONFLICT (series_id, width, block) DO UPDATE SET count = EXCLUDED.count, "
    "value_count = EXCLUDED.value_count, min = EXCLUDED.min, max = EXCLUDED.max, "
    "sum = EXCLUDED.sum, last_step = EXCLUDED.last_step, last_value = EXCLUDED.last_value"
)
_ROLLUP_FROM_POINTS = _RECOMPUTE_ROLLUPS.format(
    position="step",
    aggregates="count(*), count(c.value), min(c.value), max(c.value), sum(c.value), max(c.step)",
    children="metric_points",
    child_width="",
)
_ROLLUP_FROM_BLOCKS = _RECOMPUTE_ROLLUPS.format(
    position="block",
    aggregates="sum(c.count), sum(c.value_count), min(c.min), max(c.max), sum(c.sum), max(c.last_step)",
    children="metric_rollups",
    child_width=" AND c.width = %(child_width)s",
)


def _recompute_rollups(cursor: Any, keys: Iterable[tuple[int, int]]) -> None:
    """Recompute every block the points fall in: the narrowest from the points, each wider one
    from the blocks below it."""
    child_width = 1
    positions = set(keys)
    for width in ROLLUP_WIDTHS:
        ratio = width // child_width
        positions = {(series_id, position // ratio) for series_id, position in positions}
        series: list[int] = []
        first: list[int] = []
        last: list[int] = []
        for series_id, block in sorted(positions):
            if series and series[-1] == series_id and last[-1] == block - 1:
                last[-1] = block
            else:
                series.append(series_id)
                first.append(block)
                last.append(block)
        cursor.execute(
            _ROLLUP_FROM_POINTS if child_width == 1 else _ROLLUP_FROM_BLOCKS,
            {
                "series": series,
                "first": first,
                "last": last,
                "width": width,
                "child_width": child_width,
                "ratio": ratio,
            },
        )
        child_width = width


def read_series(
    session: Session,
    run_id: int,
    *,
    names: Sequence[str] | None,
    start_step: int | None,
    end_step: int | None,
) -> dict[str, list[list[float | int | None]]]:
    """{name: [[step, value], ...]} in step order; every requested name is present, maybe empty."""
    series_query = select(MetricSeries.id, MetricSeries.name).where(MetricSeries.run_id == run_id)
    if names:
        series_query = series_query.where(MetricSeries.name.in_(names))
    ids = {series_id: name for series_id, name in session.execute(series_query)}
    result: dict[str, list[list[float | int | None]]] = {name: [] for name in names or []}
    result.update({name: [] for name in ids.values()})
    if not ids:
        return result
    query = (
        select(MetricPoint.series_id, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.series_id.in_(ids))
        .order_by(MetricPoint.series_id, MetricPoint.step)
    )
    if start_step is not None:
        query = query.where(MetricPoint.step >= start_step)
    if end_step is not None:
        query = query.where(MetricPoint.step <= end_step)
    for series_id, step, value in session.execute(query):
        result[ids[series_id]].append([step, value])
    return result


def series_names(session: Session, run_id: int) -> list[str]:
    return list(
        session.scalars(
            select(MetricSeries.name).where(MetricSeries.run_id == run_id).order_by(MetricSeries.name)
        )
    )
