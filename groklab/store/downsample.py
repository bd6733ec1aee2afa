"""Downsampling in SQL: each series' points in a step range folded into at most N buckets.

Bucket b of a query over [start_step, end_step] covers the steps
[start_step + b*width, start_step + (b+1)*width - 1] (the last one cut at end_step), with
width = ceil((end_step - start_step + 1) / N), so the buckets tile the range with no gaps or
overlaps. A bucket holds count (points, null values included), min, max and mean (of the non-null
values: NaN and inf are stored as null) and last (the value at its highest step). Min and max make
a one-step spike survive any N; empty buckets are not returned, so a sparse series stays sparse.

On PostgreSQL, buckets of at least ROLLUP_WIDTHS[0] steps are folded from metric_rollups: each
bucket is cut, like a segment tree, into the widest aligned blocks that lie inside it, and only
the points of the narrowest blocks that a bucket edge splits are read raw. The answer is the
same as folding every point; the work grows with the number of buckets, not of points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.orm import Session, aliased

from groklab.store.metrics import ROLLUP_WIDTHS, finite_or_none
from groklab.store.models import MetricPoint


@dataclass(frozen=True)
class SeriesRef:
    id: int
    run_id: int
    name: str


@dataclass(frozen=True)
class Bucket:
    run_id: int
    name: str
    step_start: int
    step_end: int
    count: int
    min: float | None
    max: float | None
    mean: float | None
    last: float | None


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
        rows = _fold_points(session, ids, start_step, end_step, width)
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


def _fold_points(
    session: Session, ids: list[int], start_step: int, end_step: int, width: int
) -> Sequence[Any]:
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


# A block [block * width, (block + 1) * width - 1] counts when it lies inside [start, end] and
# inside one bucket; the Python side only names ranges of blocks whose parent does not. Each range
# is one index range scan: OFFSET 0 keeps the planner from turning the lateral subqueries into a
# scan of the whole table, which the row estimates of unnest() would otherwise invite.
_FOLD_ROLLUPS = text(
    "WITH parts AS ("
    "SELECT c.series_id, (c.block * r.width - :start) / :width AS bucket, c.count, "
    "c.value_count, c.min, c.max, c.sum, c.last_step "
    "FROM unnest(CAST(:block_widths AS int[]), CAST(:block_first AS bigint[]), "
    "CAST(:block_last AS bigint[])) AS r (width, first, last) "
    "CROSS JOIN LATERAL (SELECT * FROM metric_rollups WHERE series_id = ANY(CAST(:series AS int[])) "
    "AND width = r.width AND block BETWEEN r.first AND r.last OFFSET 0) AS c "
    "WHERE c.block * r.width >= :start AND (c.block + 1) * r.width - 1 <= :end "
    "AND (c.block * r.width - :start) / :width = ((c.block + 1) * r.width - 1 - :start) / :width "
    "UNION ALL "
    "SELECT p.series_id, (p.step - :start) / :width, 1, CAST(p.value IS NOT NULL AS int), "
    "p.value, p.value, p.value, p.step "
    "FROM unnest(CAST(:raw_first AS bigint[]), CAST(:raw_last AS bigint[])) AS r (first, last) "
    "CROSS JOIN LATERAL (SELECT * FROM metric_points WHERE series_id = ANY(CAST(:series AS int[])) "
    "AND step BETWEEN r.first AND r.last OFFSET 0) AS p), "
    "buckets AS (SELECT series_id, bucket, sum(count) AS count, min(min) AS min, max(max) AS max, "
    "sum(sum) / nullif(sum(value_count), 0) AS mean, max(last_step) AS last_step "
    "FROM parts GROUP BY series_id, bucket) "
    "SELECT b.series_id, b.bucket, b.count, b.min, b.max, b.mean, p.value AS last FROM buckets b "
    "JOIN metric_points p ON p.series_id = b.series_id AND p.step = b.last_step"
)


def _fold_rollups(
    session: Session, ids: list[int], start_step: int, end_step: int, width: int
) -> Sequence[Any]:
    """The same rows as _fold_points, from rollup blocks and the few points at bucket edges."""
    top = max(w for w in ROLLUP_WIDTHS if w <= width)
    # Every bucket edge, the range's own two included: a block with one strictly inside is split.
    cuts = [*range(start_step, end_step + 1, width), end_step + 1]
    block_widths = [top]
    block_first = [-(-start_step // top)]
    block_last = [(end_step + 1) // top - 1]
    # Below the top width, only the children of split blocks can be inside a bucket.
    levels = ROLLUP_WIDTHS[: ROLLUP_WIDTHS.index(top) + 1]
    for child, parent in pairwise(levels):
        ratio = parent // child
        for split in sorted({cut // parent for cut in cuts if cut % parent}):
            block_widths.append(child)
            block_first.append(split * ratio)
            block_last.append(split * ratio + ratio - 1)
    narrowest = ROLLUP_WIDTHS[0]
    split_blocks = sorted({cut // narrowest for cut in cuts if cut % narrowest})
    params = {
        "series": ids,
        "start": start_step,
        "end": end_step,
        "width": width,
        "block_widths": block_widths,
        "block_first": block_first,
        "block_last": block_last,
        "raw_first": [max(start_step, b * narrowest) for b in split_blocks],
        "raw_last": [min(end_step, b * narrowest + narrowest - 1) for b in split_blocks],
    }
    # unnest() and the lateral filters make PostgreSQL expect a few hundred rows where there are
    # ~20 per bucket, and plan for that: JIT compilation (~200 ms) and a sort instead of hashing.
    saved = session.execute(
        text("SELECT current_setting('jit') AS jit, current_setting('enable_sort') AS sort")
    ).one()
    session.execute(_SET_PLAN_SETTINGS, {"jit": "off", "sort": "off"})
    rows = session.execute(_FOLD_ROLLUPS, params).all()
    session.execute(_SET_PLAN_SETTINGS, {"jit": saved.jit, "sort": saved.sort})
    return rows


_SET_PLAN_SETTINGS = text("SELECT set_config('jit', :jit, true), set_config('enable_sort', :sort, true)")
