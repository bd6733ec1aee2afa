"""Metric series: batched idempotent writes keyed by (run, name, step), and range reads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

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
            _copy_upsert(session, rows)
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


def _copy_upsert(session: Session, rows: dict[tuple[int, int], float | None]) -> None:
    """COPY the batch into a per-connection staging table, then upsert it in one statement.

    Binary COPY is the fastest way into PostgreSQL (benchmarks/metrics.py measures it against
    executemany); the staging table lives as long as the pooled connection and is emptied after
    each batch, so two batches in one transaction never meet in one upsert.
    """
    connection = session.connection().connection.driver_connection
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS metric_points_staging "
            "(series_id integer, step bigint, value double precision)"
        )
        with cursor.copy(
            "COPY metric_points_staging (series_id, step, value) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "int8", "float8"])
            for (series_id, step), value in rows.items():
                copy.write_row((series_id, step, value))
        cursor.execute(
            "INSERT INTO metric_points (series_id, step, value) "
            "SELECT series_id, step, value FROM metric_points_staging ORDER BY series_id, step "
            "ON CONFLICT (series_id, step) DO UPDATE SET value = EXCLUDED.value"
        )
        cursor.execute("TRUNCATE metric_points_staging")


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
