"""SQL downsampling agrees with a brute-force fold of the same points, on PostgreSQL and SQLite."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.downsample import bucket_width, downsample_buckets
from groklab.store.metric_query import select_series
from groklab.store.metrics import write_points
from groklab.store.migrate import upgrade
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


values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.just(math.nan), st.just(math.inf)
)
series_points = st.dictionaries(st.integers(0, 400), values, max_size=120)


@st.composite
def queries(draw: st.DrawFn) -> tuple[dict[int, float], int, int, int]:
    points = draw(series_points)
    start = draw(st.integers(0, 400))
    end = draw(st.integers(start, 450))
    return points, start, end, draw(st.integers(1, 60))


def _new_run(url: str, points: dict[int, float]) -> int:
    with session_scope(url) as session:
        run_id = run_store.create_experiment(
            session, name="d", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)]
        ).runs[0].id
        write_points(session, run_id, [("m", step, value) for step, value in points.items()])
    return run_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries())
def test_buckets_equal_a_brute_force_fold_and_tile_the_range(
    database: str, query: tuple[dict[int, float], int, int, int]
) -> None:
    points, start, end, max_points = query
    run_id = _new_run(database, points)
    with session_scope(database) as session:
        series = select_series(session, [run_id], ["m"])
        buckets = downsample_buckets(
            session, series, start_step=start, end_step=end, max_points=max_points
        )
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
    for earlier, later in zip(buckets, buckets[1:]):
        assert earlier.step_end < later.step_start
    finite_all = [v for v in stored.values() if v is not None]
    if finite_all:
        assert min(finite_all) in {b.min for b in buckets}
        assert max(finite_all) in {b.max for b in buckets}


def test_a_one_step_spike_survives_and_a_flat_series_stays_flat(database: str) -> None:
    spiky = {step: 1.0 for step in range(10_000)} | {4321: 1e9}
    run_id = _new_run(database, spiky)
    with session_scope(database) as session:
        series = select_series(session, [run_id], ["m"])
        buckets = downsample_buckets(session, series, start_step=0, end_step=9_999, max_points=3)
    assert len(buckets) == 3
    assert max(b.max for b in buckets if b.max is not None) == 1e9
    assert [b.min for b in buckets] == [1.0, 1.0, 1.0]
