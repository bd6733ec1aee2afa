"""Downsampling in SQL: each series' points in a step range folded into at most N buckets.

Bucket b of a query over [start_step, end_step] covers the steps
[start_step + b*width, start_step + (b+1)*width - 1] (the last one cut at end_step), with
width = ceil((end_step - start_step + 1) / N), so the buckets tile the range with no gaps or
overlaps. A bucket holds count (points, null values included), min, max and mean (of the non-null
values: NaN and inf are stored as null) and last (the value at its highest step). Min and max make
a one-step spike survive any N; empty buckets are not returned, so a sparse series stays sparse.

On PostgreSQL, buckets of at least ROLLUP_WIDTHS[0] steps are folded from metric_rollups: each
bucket is cut, like a segment tree, into the widest aligned blocks that lie inside it (rollup_cover),
and only the points of the narrowest blocks that a bucket edge splits are read raw. The answer is the
same as folding every point; the work grows with the number of buckets, not of points.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy import and_, func, select, text
from sqlalchemy.orm import Session, aliased

from groklab.store.metric_writes import finite_or_none
from groklab.store.models import MetricPoint
from groklab.store.rollups import ROLLUP_WIDTHS, array_literal


@dataclass(frozen=True)
class SeriesRef:
    id: int
    run_id: int
    name: str


@dataclass(frozen=True)
class Bucket:
    """One downsampled row; its fields, in order, are the columns of every format the api serves."""

    run_id: int
    name: str
    step_start: Annotated[int, Field(description="First step the bucket covers (inclusive).")]
    step_end: Annotated[int, Field(description="Last step the bucket covers (inclusive).")]
    count: Annotated[int, Field(description="Points in the bucket, null values included.")]
    min: float | None
    max: float | None
    mean: Annotated[float | None, Field(description="Mean of the bucket's non-null values.")]
    last: Annotated[float | None, Field(description="Value at the bucket's highest step.")]


def bucket_width(start_step: int, end_step: int, max_points: int) -> int:
    return -(-(end_step - start_step + 1) // max_points)


def downsample_buckets(
    session: Session,
    series: Sequence[SeriesRef],
    *,
    start_step: int,
    end_step: int,
    max_points: int,
) -> list[Bucket]:
    """The non-empty buckets of every series, ordered by run, name and step."""
    if not series:
        return []
    width = bucket_width(start_step, end_step, max_points)
    ids = [s.id for s in series]
    if session.get_bind().dialect.name == "postgresql" and width >= ROLLUP_WIDTHS[0]:
        rows = _fold_rollups(session, ids, start_step, end_step, width)
    else:
        rows = fold_points(session, ids, start_step, end_step, width)
    by_id = {s.id: s for s in series}
    buckets = []
    for series_id, bucket, count, low, high, mean, last in rows:
        ref = by_id[series_id]
        step_start = start_step + bucket * width
        step_end = step_start + width - 1
        buckets.append(
            Bucket(
                ref.run_id,
                ref.name,
                step_start,
                min(end_step, step_end),
                count,
                low,
                high,
                None if mean is None else finite_or_none(float(mean)),
                last,
            )
        )
    buckets.sort(key=lambda b: (b.run_id, b.name, b.step_start))
    return buckets


def fold_points(session: Session, ids: list[int], start_step: int, end_step: int, width: int) -> Sequence[Any]:
    """(series_id, bucket, count, min, max, mean, last) of each non-empty bucket, from every point."""
    # Integer division on both databases: steps are >= start_step, so it is a floor.
    bucket = ((MetricPoint.step - start_step) // width).label("bucket")
    groups = (
        select(
            MetricPoint.series_id,
            bucket,
            func.count().label("count"),
            func.min(MetricPoint.value).label("min"),
            func.max(MetricPoint.value).label("max"),
            func.avg(MetricPoint.value).label("mean"),
            func.max(MetricPoint.step).label("last_step"),
        )
        .where(MetricPoint.series_id.in_(ids), MetricPoint.step.between(start_step, end_step))
        .group_by(MetricPoint.series_id, bucket)
        .subquery()
    )
    # The last value is one primary-key lookup per bucket rather than an ordered aggregate.
    last = aliased(MetricPoint)
    query = select(
        groups.c.series_id, groups.c.bucket, groups.c.count, groups.c.min, groups.c.max, groups.c.mean, last.value
    ).join(last, and_(last.series_id == groups.c.series_id, last.step == groups.c.last_step))
    return session.execute(query).all()


# A group's bucket: n, mean, min and max of its series' bucket means (means of non-null values),
# folded in the database so that only groups x buckets rows leave it, whatever the runs.
_GROUP_FOLD = (
    "SELECT m.combo, f.bucket, count(f.mean), avg(f.mean), min(f.mean), max(f.mean) "
    "FROM folded AS f JOIN {mapping} AS m ON m.series_id = f.series_id "
    "WHERE f.mean IS NOT NULL GROUP BY m.combo, f.bucket"
)
_RAW_MEANS_SQLITE = (
    "SELECT series_id, (step - :start_step) / :width AS bucket, avg(value) AS mean FROM metric_points "
    "WHERE series_id IN (SELECT CAST(key AS INTEGER) FROM json_each(:map_json)) "
    "AND step BETWEEN :start_step AND :end_step GROUP BY series_id, (step - :start_step) / :width"
)
# On PostgreSQL each series is folded on its own (a lateral subquery: an index range scan and a
# sort of its ~1,000 points) rather than all 1.2M points of a 200-run page sorted or hashed at
# once, which spilled to disk: 1.45 s instead of 2.1 s (benchmarks/experiment_page.py).
_RAW_GROUP_FOLD_PG = (
    "SELECT m.combo, f.bucket, count(f.mean), avg(f.mean), min(f.mean), max(f.mean) "
    "FROM unnest(CAST(:map_series AS int[]), CAST(:map_combos AS int[])) AS m (series_id, combo) "
    "CROSS JOIN LATERAL (SELECT (step - :start_step) / :width AS bucket, avg(value) AS mean "
    "FROM metric_points WHERE series_id = m.series_id AND step BETWEEN :start_step AND :end_step "
    "GROUP BY 1) AS f WHERE f.mean IS NOT NULL GROUP BY m.combo, f.bucket"
)
_GROUP_FOLD_WORK_MEM = "64MB"
"""Memory of the fold's hash of groups x buckets (60,000 for a 200-run page, ~15 MB): with the
default 4 MB it spills to disk."""
_MAPPING = {
    "postgresql": "(SELECT * FROM unnest(CAST(:map_series AS int[]), CAST(:map_combos AS int[])) AS u (series_id, combo))",
    "sqlite": "(SELECT CAST(key AS INTEGER) AS series_id, value AS combo FROM json_each(:map_json))",
}


def fold_group_means(
    session: Session,
    combos: dict[int, int],
    *,
    start_step: int,
    end_step: int,
    max_points: int,
) -> list[tuple[int, int, int, float | None, float | None, float | None]]:
    """(combo, bucket, n, mean, min, max) of each combo's non-empty buckets, where `combos` maps
    series ids to the combo (a group and a name) they count in. Each series' bucket mean is folded
    as downsample_buckets folds it (from rollups on PostgreSQL when buckets are wide enough)."""
    if not combos:
        return []
    width = bucket_width(start_step, end_step, max_points)
    dialect = session.get_bind().dialect.name
    kind = "postgresql" if dialect == "postgresql" else "sqlite"
    mapping = _MAPPING[kind]
    params: dict[str, Any] = {"start_step": start_step, "end_step": end_step, "width": width}
    if dialect == "postgresql":
        params |= {"map_series": array_literal(list(combos)), "map_combos": array_literal(list(combos.values()))}
    else:
        params["map_json"] = json.dumps({str(k): v for k, v in combos.items()})
    if dialect == "postgresql" and width >= ROLLUP_WIDTHS[0]:
        return [
            (combo, bucket, n, _finite(mean), low, high)
            for combo, bucket, n, mean, low, high in _fold_rollups(
                session, list(combos), start_step, end_step, width,
                wrap=lambda folded: "WITH folded (series_id, bucket, count, min, max, mean, last) AS ("
                + folded + ") " + _GROUP_FOLD.format(mapping=mapping),
                extra=params,
            )
        ]  # fmt: skip
    if dialect == "postgresql":
        # As in _fold_rollups: the array filter's estimates invite JIT compilation, which costs
        # more than the fold itself.
        saved = session.execute(text("SELECT current_setting('jit'), current_setting('work_mem')")).one()
        session.execute(_SET_FOLD_SETTINGS, {"jit": "off", "work_mem": _GROUP_FOLD_WORK_MEM})
        rows = session.execute(text(_RAW_GROUP_FOLD_PG), params).all()
        session.execute(_SET_FOLD_SETTINGS, {"jit": saved[0], "work_mem": saved[1]})
    else:
        raw = "WITH folded AS (" + _RAW_MEANS_SQLITE + ") " + _GROUP_FOLD.format(mapping=mapping)
        rows = session.execute(text(raw), params).all()
    return [(combo, bucket, n, _finite(mean), low, high) for combo, bucket, n, mean, low, high in rows]


def _finite(mean: Any) -> float | None:
    return None if mean is None else finite_or_none(float(mean))


def rollup_cover(lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """[lo, hi] as runs of whole aligned rollup blocks, each as wide as fits: (width, first block,
    last block); the steps no block fits are (0, first step, last step), at most 15 at each end."""
    narrowest, widest = ROLLUP_WIDTHS[0], ROLLUP_WIDTHS[-1]
    position = lo
    while position <= hi:
        width = 0
        for candidate in ROLLUP_WIDTHS:  # each width divides the next: alignment is nested
            if position % candidate or position + candidate - 1 > hi:
                break
            width = candidate
        if width == 0:
            last = min(hi, position - position % narrowest + narrowest - 1)
            yield 0, position, last
            position = last + 1
            continue
        count = (hi + 1 - position) // width
        if width != widest:
            wider = ROLLUP_WIDTHS[ROLLUP_WIDTHS.index(width) + 1]
            # Stop where the next width's alignment starts: from there its blocks may fit.
            count = min(count, (-position) % wider // width or count)
        yield width, position // width, position // width + count - 1
        position += count * width


# Each block range is one index-only range scan of the covering primary key, and each raw range
# one of metric_points; OFFSET 0 keeps the planner from turning the lateral subqueries into a scan
# of the whole table, which the row estimates of unnest() would otherwise invite. A bucket's last
# value is that of its part with the highest last step: max() of [step, value] arrays compares the
# steps first (exact as float8 up to 2^53), so no second lookup of the point is needed.
_FOLD_ROLLUPS = text(
    "WITH parts AS ("
    "SELECT c.series_id, r.bucket, c.count, c.value_count, c.min, c.max, c.sum, "
    "ARRAY[c.last_step::float8, c.last_value] AS last "
    "FROM unnest(CAST(:block_widths AS int[]), CAST(:block_first AS bigint[]), "
    "CAST(:block_last AS bigint[]), CAST(:block_buckets AS int[])) AS r (width, first, last, bucket) "
    "CROSS JOIN LATERAL (SELECT * FROM metric_rollups WHERE series_id = ANY(CAST(:series AS int[])) "
    "AND width = r.width AND block BETWEEN r.first AND r.last OFFSET 0) AS c "
    "UNION ALL "
    "SELECT p.series_id, r.bucket, 1, CAST(p.value IS NOT NULL AS int), p.value, p.value, p.value, "
    "ARRAY[p.step::float8, p.value] "
    "FROM unnest(CAST(:raw_first AS bigint[]), CAST(:raw_last AS bigint[]), CAST(:raw_buckets AS int[])) "
    "AS r (first, last, bucket) "
    "CROSS JOIN LATERAL (SELECT * FROM metric_points WHERE series_id = ANY(CAST(:series AS int[])) "
    "AND step BETWEEN r.first AND r.last OFFSET 0) AS p) "
    "SELECT series_id, bucket, sum(count), min(min), max(max), sum(sum) / nullif(sum(value_count), 0), "
    "(max(last))[2] FROM parts GROUP BY series_id, bucket"
)


def _fold_rollups(
    session: Session,
    ids: list[int],
    start_step: int,
    end_step: int,
    width: int,
    *,
    wrap: Callable[[str], str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Sequence[Any]:
    """The same rows as fold_points, from rollup blocks and the few points at bucket edges."""
    blocks: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    raw: tuple[list[int], list[int], list[int]] = ([], [], [])
    for bucket, lo in enumerate(range(start_step, end_step + 1, width)):
        for block_width, first, last in rollup_cover(lo, min(end_step, lo + width - 1)):
            if block_width:
                for column, value in zip(blocks, (block_width, first, last, bucket)):
                    column.append(value)
            else:
                for column, value in zip(raw, (first, last, bucket)):
                    column.append(value)
    columns = {
        "block_widths": blocks[0],
        "block_first": blocks[1],
        "block_last": blocks[2],
        "block_buckets": blocks[3],
        "raw_first": raw[0],
        "raw_last": raw[1],
        "raw_buckets": raw[2],
    }
    params = {name: array_literal(values) for name, values in columns.items()} | {"series": array_literal(ids)}
    # unnest() and the lateral filters make PostgreSQL expect millions of rows where there are
    # ~10 per bucket, and plan for that: JIT compilation (~200 ms) and a sort instead of hashing.
    saved = session.execute(text("SELECT current_setting('jit') AS jit, current_setting('enable_sort') AS sort")).one()
    session.execute(_SET_PLAN_SETTINGS, {"jit": "off", "sort": "off"})
    statement = _FOLD_ROLLUPS if wrap is None else text(wrap(_FOLD_ROLLUPS.text))
    rows = session.execute(statement, params | (extra or {})).all()
    session.execute(_SET_PLAN_SETTINGS, {"jit": saved.jit, "sort": saved.sort})
    return rows


_SET_FOLD_SETTINGS = text("SELECT set_config('jit', :jit, true), set_config('work_mem', :work_mem, true)")
_SET_PLAN_SETTINGS = text("SELECT set_config('jit', :jit, true), set_config('enable_sort', :sort, true)")
