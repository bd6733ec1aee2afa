"""Metric writes are idempotent per (run, name, step) and reads come back in step order."""

from __future__ import annotations

import math

import pytest

from groklab.store import metrics as metric_store
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_rewriting_a_step_keeps_one_point_and_nan_reads_as_null(
    database: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("fresh_pg_url" if database == "postgresql" else "sqlite_url")
    upgrade(url)
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session, name="t", spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)]
        )
        run_id = experiment.runs[0].id
    with session_scope(url) as session:
        metric_store.write_points(
            session, run_id, [("loss", 2, 0.5), ("loss", 0, 1.0), ("acc", 0, math.nan)], step=2
        )
    with session_scope(url) as session:
        # A resumed run logs step 2 again (and goes on): still one point per step.
        metric_store.write_points(session, run_id, [("loss", 2, 0.25), ("loss", 4, 0.125)], step=4)
    with session_scope(url) as session:
        series = metric_store.read_series(session, run_id, names=None, start_step=None, end_step=None)
        run = run_store.get_run(session, run_id)
        ranged = metric_store.read_series(session, run_id, names=["loss", "nope"], start_step=1, end_step=3)
    assert series == {"loss": [[0, 1.0], [2, 0.25], [4, 0.125]], "acc": [[0, None]]}
    assert run.step == 4
    assert run.latest_metrics == {"loss": [4, 0.125], "acc": [0, None]}
    assert ranged == {"loss": [[2, 0.25]], "nope": []}
