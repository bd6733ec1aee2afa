"""SQL downsampling agrees with a brute-force fold of the same points, on PostgreSQL and SQLite."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.spec import log_spaced_steps
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.downsample import Bucket, bucket_width, downsample_buckets, rollup_cover
from groklab.store.forks import copy_parent_points
from groklab.store.metric_reads import select_series
from groklab.store.metric_writes import write_points
from groklab.store.migrate import upgrade
from groklab.store.rollups import ROLLUP_WIDTHS
from tests.services import create_pg_database, drop_pg_database


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "postgresql":
        name, url = create_pg_database()
        upgrade(url)
        yield url
        drop_pg_database(name)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('downsample') / 'groklab.db'}"
        upgrade(url)
        yield url


values = st.one_of(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.just(math.nan), st.just(math.inf))
series_points = st.dictionaries(st.integers(0, 400), values, max_size=120)


@st.composite
def queries(draw: st.DrawFn) -> tuple[dict[int, float], int, int, int]:
    points = draw(series_points)
    start = draw(st.integers(0, 400))
    end = draw(st.integers(start, 450))
    return points, start, end, draw(st.integers(1, 60))


def _new_run(url: str, points: dict[int, float]) -> int:
    with session_scope(url) as session:
        run_id = (
            run_store.create_experiment(session, name="d", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)]).runs[0].id
        )
        write_points(session, run_id, [("m", step, value) for step, value in points.items()])
    return run_id


def _assert_buckets_equal_a_brute_force_fold(
    buckets: list[Bucket], points: dict[int, float], start: int, end: int, max_points: int
) -> None:
    width = bucket_width(start, end, max_points)
    assert -(-(end - start + 1) // width) <= max_points
    stored = {s: (v if math.isfinite(v) else None) for s, v in points.items() if start <= s <= end}
    expected: dict[int, list[int]] = {}
    for step in sorted(stored):
        expected.setdefault((step - start) // width, []).append(step)
    assert len(buckets) == len(expected)
    for bucket, (index, steps) in zip(buckets, sorted(expected.items()), strict=True):
        assert bucket.step_start == start + index * width
        assert bucket.step_end == min(bucket.step_start + width - 1, end)
        assert all(bucket.step_start <= s <= bucket.step_end for s in steps)
        finite = [stored[s] for s in steps if stored[s] is not None]
        assert bucket.count == len(steps)
        assert bucket.min == (min(finite) if finite else None)
        assert bucket.max == (max(finite) if finite else None)
        assert bucket.last == stored[steps[-1]]
        if finite:
            assert bucket.mean == pytest.approx(sum(finite) / len(finite), rel=1e-9, abs=1e-9)
        else:
            assert bucket.mean is None
    for earlier, later in pairwise(buckets):
        assert earlier.step_end < later.step_start
    finite_all = [v for v in stored.values() if v is not None]
    if finite_all:
        assert min(finite_all) in {b.min for b in buckets}
        assert max(finite_all) in {b.max for b in buckets}


def _downsample(url: str, run_id: int, start: int, end: int, max_points: int) -> list[Bucket]:
    with session_scope(url) as session:
        series = select_series(session, [run_id], ["m"])
        return downsample_buckets(session, series, start_step=start, end_step=end, max_points=max_points)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries())
def test_buckets_equal_a_brute_force_fold_and_tile_the_range(
    database: str, query: tuple[dict[int, float], int, int, int]
) -> None:
    points, start, end, max_points = query
    run_id = _new_run(database, points)
    buckets = _downsample(database, run_id, start, end, max_points)
    _assert_buckets_equal_a_brute_force_fold(buckets, points, start, end, max_points)


def _long_series() -> tuple[dict[int, float], list[dict[int, float]]]:
    """A series with gaps, NaN, inf and spikes over every rollup width, and the batches that
    wrote it: some new steps, some overwriting earlier values (former extremes among them)."""
    rng = random.Random(7)
    steps = [*range(40_000), *range(70_000, 150_000), *range(150_000, 420_000, 997)]
    first = {step: rng.gauss(0, 1) for step in steps}
    for step in rng.sample(steps, 300):
        first[step] = rng.choice([math.nan, math.inf, -math.inf, 1e6 * rng.random(), -1e6])
    rewrites = {step: rng.choice([rng.gauss(0, 1), math.nan, 5.0, -5.0]) for step in rng.sample(steps, 2_000)}
    # The biggest value and a whole block are overwritten too, and some rewrites add new steps.
    rewrites[max(first, key=lambda s: first[s] if math.isfinite(first[s]) else -math.inf)] = 0.0
    rewrites |= {step: 1.5 for step in range(70_000, 70_256)} | {step: 2.5 for step in range(40_000, 40_050)}
    batches = [dict(list(first.items())[i : i + 50_000]) for i in range(0, len(first), 50_000)]
    return first | rewrites, [*batches, rewrites]


@pytest.fixture(scope="module")
def long_run(database: str) -> tuple[int, int, dict[int, float]]:
    """The long series as written in batches, and a fork (a copy of its points) of it."""
    final, batches = _long_series()
    with session_scope(database) as session:
        parent, child = run_store.create_experiment(
            session, name="long", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)] * 2
        ).runs
        parent_id, child_id = parent.id, child.id
    for batch in batches:
        with session_scope(database) as session:
            write_points(session, parent_id, [("m", step, value) for step, value in batch.items()])
    with session_scope(database) as session:
        copy_parent_points(session, parent_id, child_id)
    return parent_id, child_id, final


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 430_000),
    length=st.integers(1, 430_000),
    max_points=st.integers(1, 40),
    forked=st.booleans(),
)
def test_buckets_of_a_long_rewritten_series_equal_a_brute_force_fold(
    database: str, long_run: tuple[int, int, dict[int, float]], start: int, length: int, max_points: int, forked: bool
) -> None:
    parent_id, child_id, points = long_run
    end = start + length - 1
    buckets = _downsample(database, child_id if forked else parent_id, start, end, max_points)
    _assert_buckets_equal_a_brute_force_fold(buckets, points, start, end, max_points)


@pytest.fixture(scope="module")
def log_scheduled_run(database: str) -> tuple[int, dict[int, float]]:
    """A 10^7-step run's series on the log evaluation schedule (1,000 points): its steps are
    every step at first, then ever further apart, across every rollup width."""
    rng = random.Random(11)
    points = {step: rng.gauss(0, 1) for step in sorted(log_spaced_steps(10_000_000, 1_000))}
    return _new_run(database, points), points


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 10_000_000), length=st.integers(1, 10_000_001), max_points=st.integers(1, 60))
def test_buckets_of_a_log_scheduled_series_equal_a_brute_force_fold(
    database: str, log_scheduled_run: tuple[int, dict[int, float]], start: int, length: int, max_points: int
) -> None:
    run_id, points = log_scheduled_run
    end = min(start + length - 1, 10_000_000)
    buckets = _downsample(database, run_id, start, end, max_points)
    _assert_buckets_equal_a_brute_force_fold(buckets, points, start, end, max_points)


def test_a_one_step_spike_survives_and_a_flat_series_stays_flat(database: str) -> None:
    spiky = {step: 1.0 for step in range(10_000)} | {4321: 1e9}
    run_id = _new_run(database, spiky)
    with session_scope(database) as session:
        series = select_series(session, [run_id], ["m"])
        buckets = downsample_buckets(session, series, start_step=0, end_step=9_999, max_points=3)
    assert len(buckets) == 3
    assert max(b.max for b in buckets if b.max is not None) == 1e9
    assert [b.min for b in buckets] == [1.0, 1.0, 1.0]


@given(lo=st.integers(0, 300_000), length=st.integers(1, 300_000))
def test_rollup_cover_tiles_the_range_with_aligned_blocks_and_few_parts(lo: int, length: int) -> None:
    hi = lo + length - 1
    parts = list(rollup_cover(lo, hi))
    covered = []
    for width, first, last in parts:
        if width == 0:
            assert first // ROLLUP_WIDTHS[0] == last // ROLLUP_WIDTHS[0]  # inside one narrowest block
            covered.append((first, last))
        else:
            assert width in ROLLUP_WIDTHS and first <= last
            covered.append((first * width, (last + 1) * width - 1))
    assert covered[0][0] == lo and covered[-1][1] == hi
    assert all(b[0] == a[1] + 1 for a, b in pairwise(covered))  # no gaps, no overlaps
    # Per width, at most one run on each side of the widest block: the read folds few rows.
    assert len(parts) <= 2 * len(ROLLUP_WIDTHS) + 1
