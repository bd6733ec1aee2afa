"""metric_rollups: per-series blocks of points (count, sum, min, max, last) at widths 16 to 65,536
steps, kept in step with metric_points by every write, so a downsampled read folds blocks, not points.

PostgreSQL only (SQLite reads fold the points: its databases are small).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

ROLLUP_WIDTHS = (16, 64, 256, 1024, 4096, 16384, 65536)
"""Block widths of metric_rollups: 4 blocks of one width make one block of the next, so a bucket
is cut into at most 3 blocks per width at each edge (~10 blocks per bucket in
benchmarks/metric_store.py); 16 to one would fold twice as many rows per read."""


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


def merge_new_points(cursor: Any, series: np.ndarray, steps: np.ndarray, values: np.ndarray) -> None:
    """Fold points that are all new (sorted by series and step; NaN for null) into every width."""
    blocks = steps // ROLLUP_WIDTHS[0]
    change = np.flatnonzero((series[1:] != series[:-1]) | (blocks[1:] != blocks[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(blocks)])) - 1
    present = ~np.isnan(values)
    value_counts = np.add.reduceat(present.astype(np.int64), starts)
    # fmin/fmax skip NaN (null) values; a block of nulls only stays NaN, sent as NULL.
    sums = np.add.reduceat(np.where(present, values, 0.0), starts)
    sums[value_counts == 0] = math.nan
    cursor.execute(
        _MERGE_ROLLUPS,
        {
            "series": array_literal(series[starts]),
            "blocks": array_literal(blocks[starts]),
            "counts": array_literal(ends - starts + 1),
            "value_counts": array_literal(value_counts),
            "mins": array_literal(np.fmin.reduceat(values, starts)),
            "maxes": array_literal(np.fmax.reduceat(values, starts)),
            "sums": array_literal(sums),
            "last_steps": array_literal(steps[ends]),
            "last_values": array_literal(values[ends]),
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
# an UPDATE of the run's row, which makes the flushes of one run take turns. The blocks come as
# runs of consecutive blocks (a worker's batch is one run per series), read with one index range scan each; a block's last
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


def recompute_blocks(cursor: Any, keys: Iterable[tuple[int, int]]) -> None:
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
