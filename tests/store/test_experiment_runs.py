"""What GET /v1/experiments shows of each experiment's runs (store.runs.experiment_runs), read as
one row per experiment and status with the ids joined in a string, on each database."""

from __future__ import annotations

from sqlalchemy import update

from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from groklab.store.models import Run


def test_each_experiments_run_ids_come_in_id_order_with_their_status_counts(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url)
    with session_scope(url) as session:
        new_run = run_store.NewRun(spec={}, total_steps=10)
        big = run_store.create_experiment(session, name="big", spec={}, runs=[new_run] * 12)
        small = run_store.create_experiment(session, name="small", spec={}, runs=[new_run] * 2)
        session.flush()
        big_ids = [run.id for run in big.runs]
        # Statuses interleaved across ids, so that no status's ids are a contiguous range.
        for i, run_id in enumerate(big_ids):
            status = (run_store.SUCCEEDED, run_store.FAILED, run_store.QUEUED)[i % 3]
            session.execute(update(Run).where(Run.id == run_id).values(status=status))
        big_id, small_id, small_ids = big.id, small.id, [run.id for run in small.runs]
    with session_scope(url) as session:
        found = run_store.experiment_runs(session, [small_id, big_id, big_id + small_id + 1])
    # 12 ids: ten and more, which a string order would put before 9.
    assert found[big_id].run_ids == sorted(big_ids) and len(big_ids) == 12
    assert found[big_id].status_counts == {run_store.SUCCEEDED: 4, run_store.FAILED: 4, run_store.QUEUED: 4}
    assert found[small_id] == run_store.ExperimentRuns(small_ids, {run_store.QUEUED: 2})
    assert found[big_id + small_id + 1] == run_store.ExperimentRuns([], {})
