"""The runs of an ensemble write their points together: one transaction per flush for all of them,
each fenced by its own lease, so a run whose lease moved on is left out and the others are written."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DataError

from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_factory, session_scope
from groklab.store.metric_reads import read_series
from groklab.store.migrate import upgrade
from worker.sink import MetricWriter


def _three_runs(url: str) -> list[int]:
    upgrade(url)
    with session_scope(url) as session:
        new = [run_store.NewRun(spec={}, total_steps=10) for _ in range(3)]
        experiment = run_store.create_experiment(session, name=None, spec={}, runs=new)
        return [run.id for run in experiment.runs]


def test_an_ensemble_flush_is_one_transaction_for_its_runs_less_the_one_fenced_off(empty_database_url: str) -> None:
    url = empty_database_url
    run_ids = _three_runs(url)
    with session_scope(url) as session:
        held = [
            leases.claim_run(session, run_id, worker="w", lease_seconds=-1 if k == 1 else 60) for k, run_id in enumerate(run_ids)
        ]
    with session_scope(url) as session:
        assert leases.expire_leases(session) == [run_ids[1]]  # run 1 is re-queued: this worker is fenced off
    writer = MetricWriter(url, lease_seconds=60, flush_seconds=3600, flush_points=1000)
    sinks = [writer.sink(lease) for lease in held if lease is not None]
    for k, sink in enumerate(sinks):
        sink.log(0, {"train_loss": float(k), "test_acc": 0.5})
        sink.progress(1, 10)

    commits: list[object] = []
    engine = session_factory(url).kw["bind"]
    count = commits.append
    event.listen(engine, "commit", count)
    try:
        sinks[0].flush()  # the engine flushes a member before its checkpoint: every run's points go
        assert len(commits) == 1
        for sink in sinks[1:]:  # the other members of that checkpoint: nothing new, no transaction
            sink.flush()
        assert len(commits) == 1
    finally:
        event.remove(engine, "commit", count)

    assert [sink.lease_lost for sink in sinks] == [False, True, False]
    assert [sink.points_written for sink in sinks] == [2, 0, 2]
    with session_scope(url) as session:
        series = [read_series(session, run_id, names=None, start_step=None, end_step=None) for run_id in run_ids]
        steps = [run_store.get_run(session, run_id).step for run_id in run_ids]
    assert series == [{"test_acc": [[0, 0.5]], "train_loss": [[0, 0.0]]}, {}, {"test_acc": [[0, 0.5]], "train_loss": [[0, 2.0]]}]
    assert steps[0] == steps[2] == 1
    # The fenced-off run buffers nothing more; the others go on being written.
    sinks[1].log(1, {"train_loss": 1.0})
    sinks[2].log(1, {"train_loss": 1.5})
    sinks[2].flush()
    assert [sink.points_written for sink in sinks] == [2, 0, 3]


def test_a_write_error_of_one_run_fails_that_run_alone(empty_database_url: str) -> None:
    url = empty_database_url
    if not url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce the series name's length")
    run_ids = _three_runs(url)[:2]
    with session_scope(url) as session:
        held = [leases.claim_run(session, run_id, worker="w", lease_seconds=60) for run_id in run_ids]
    writer = MetricWriter(url, lease_seconds=60, flush_seconds=3600, flush_points=1000)
    bad, good = (writer.sink(lease) for lease in held if lease is not None)
    bad.log(0, {"x" * 65: 1.0})  # longer than metric_series.name's 64 characters: refused
    good.log(0, {"train_loss": 1.0})
    good.flush()  # the combined transaction fails; run by run, the good run's points go in
    assert good.points_written == 1 and bad.points_written == 0
    with pytest.raises(DataError):
        bad.progress(1, 10)  # the error reaches the run it belongs to, and fails it
    good.log(1, {"train_loss": 0.5})
    good.flush()
    assert good.points_written == 2
    with session_scope(url) as session:
        assert read_series(session, run_ids[0], names=None, start_step=None, end_step=None) == {}
        assert read_series(session, run_ids[1], names=None, start_step=None, end_step=None) == {
            "train_loss": [[0, 1.0], [1, 0.5]]
        }
