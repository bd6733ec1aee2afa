"""Metric writes are idempotent per (run, name, step), keep their rollup blocks exact, and reads come back in step order."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_reads import read_series
from groklab.store.metric_writes import series_ids, write_points
from groklab.store.migrate import upgrade
from groklab.store.models import MetricRollup
from groklab.store.rollups import ROLLUP_WIDTHS


def test_rewriting_a_step_keeps_one_point_and_nan_reads_as_null(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url)
    with session_scope(url) as session:
        experiment = run_store.create_experiment(session, name="t", spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)])
        run_id = experiment.runs[0].id
    with session_scope(url) as session:
        write_points(session, run_id, [("loss", 2, 0.5), ("loss", 0, 1.0), ("acc", 0, math.nan)], step=2)
    with session_scope(url) as session:
        # A resumed run logs step 2 again (and goes on): still one point per step.
        write_points(session, run_id, [("loss", 2, 0.25), ("loss", 4, 0.125)], step=4)
    with session_scope(url) as session:
        series = read_series(session, run_id, names=None, start_step=None, end_step=None)
        run = run_store.get_run(session, run_id)
        ranged = read_series(session, run_id, names=["loss", "nope"], start_step=1, end_step=3)
    assert series == {"loss": [[0, 1.0], [2, 0.25], [4, 0.125]], "acc": [[0, None]]}
    assert run.step == 4
    assert run.latest_metrics == {"loss": [4, 0.125], "acc": [0, None]}
    assert run.stored_points == 4  # the re-logged step 2 is not counted twice (owner usage sums this)
    assert ranged == {"loss": [[2, 0.25]], "nope": []}


def test_rollup_blocks_equal_a_fold_of_their_points_after_rewrites(fresh_pg_url: str) -> None:
    upgrade(fresh_pg_url)
    with session_scope(fresh_pg_url) as session:
        run_id = (
            run_store.create_experiment(session, name="t", spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)]).runs[0].id
        )
    first = [(name, step, float(step % 97) - 40.0) for step in range(0, 70_000, 7) for name in ("a", "b")]
    # One batch overwrites every point of "b" from step 56 to 5,000 (blocks' maxima among them),
    # every 97th point of "a" with 1000 or NaN, and adds a new step: its COPY fails, it is upserted.
    rewrites = [("a", step, math.nan if step % 2 else 1000.0) for step in range(0, 70_000, 7 * 97)]
    rewrites += [("b", step, -1.0) for step in range(56, 5_000, 7)] + [("b", 70_001, 3.0)]
    for batch in (first[:30_000], first[30_000:], rewrites):
        with session_scope(fresh_pg_url) as session:
            write_points(session, run_id, batch)
    with session_scope(fresh_pg_url) as session:
        stored = read_series(session, run_id, names=None, start_step=None, end_step=None)
        ids = series_ids(session, run_id, stored)
        rollups = session.execute(select(MetricRollup)).scalars().all()
    expected = {}
    for name, points in stored.items():
        for width in ROLLUP_WIDTHS:
            for step, value in points:
                expected.setdefault((ids[name], width, step // width), []).append((step, value))
    assert {(r.series_id, r.width, r.block) for r in rollups} == expected.keys()
    for r in rollups:
        points = expected[r.series_id, r.width, r.block]
        values = [value for _, value in points if value is not None]
        assert (r.count, r.value_count) == (len(points), len(values))
        assert (r.min, r.max) == ((min(values), max(values)) if values else (None, None))
        assert r.sum == (pytest.approx(sum(values)) if values else None)
        assert (r.last_step, r.last_value) == points[-1]
