"""Downsampling in SQL: each series' points in a step range folded into at most N buckets.

Bucket b of a query over [start_step, end_step] covers the steps
[start_step + b*width, start_step + (b+1)*width - 1] (the last one cut at end_step), with
width = ceil((end_step - start_step + 1) / N), so the buckets tile the range with no gaps or
overlaps. A bucket holds count (points, null values included), min, max and mean (of the non-null
values: NaN and inf are stored as null) and last (the value at its highest step). Min and max make
a one-step spike survive any N; empty buckets are not returned, so a sparse series stays sparse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from groklab.store.metrics import finite_or_none
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
        .where(
            MetricPoint.series_id.in_([s.id for s in series]),
            MetricPoint.step.between(start_step, end_step),
        )
        .group_by(MetricPoint.series_id, bucket)
        .subquery()
    )
    # The last value is one primary-key lookup per bucket rather than an ordered aggregate.
    last = aliased(MetricPoint)
    query = select(groups, last.value).join(
        last, and_(last.series_id == groups.c.series_id, last.step == groups.c.last_step)
    )
    by_id = {s.id: s for s in series}
    buckets = []
    for row in session.execute(query):
        ref = by_id[row.series_id]
        step_start = start_step + row.bucket * width
        buckets.append(
            Bucket(
                run_id=ref.run_id,
                name=ref.name,
                step_start=step_start,
                step_end=min(step_start + width - 1, end_step),
                count=row.count,
                min=row.min,
                max=row.max,
                mean=None if row.mean is None else finite_or_none(float(row.mean)),
                last=row.value,
            )
        )
    buckets.sort(key=lambda b: (b.run_id, b.name, b.step_start))
    return buckets
