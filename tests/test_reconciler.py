"""reconcile_once on SQLite and PostgreSQL with the filesystem broker: lost and expired runs are re-sent."""

from __future__ import annotations

from pathlib import Path

from groklab.dispatch import pending_run_ids
from groklab.reconciler import reconcile_once
from groklab.settings import Settings
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from worker.celery_config import make_celery


def _runs(url: str, count: int) -> list[int]:
    upgrade(url)
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session, name=None, spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)] * count
        )
        return [run.id for run in experiment.runs]


def test_a_queued_run_without_a_message_is_sent_once(empty_database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=empty_database_url, data_dir=tmp_path, requeue_grace_seconds=30)
    celery = make_celery(settings)
    run_ids = _runs(empty_database_url, 2)
    report = reconcile_once(settings, celery)
    assert (report.expired, report.resent) == ([], run_ids)
    assert pending_run_ids(celery, settings.queue_name) == set(run_ids)
    assert reconcile_once(settings, celery).resent == []  # sent just now, and waiting in the broker


def test_an_expired_run_is_requeued_and_sent_again(empty_database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=empty_database_url, data_dir=tmp_path)
    celery = make_celery(settings)
    [run_id] = _runs(empty_database_url, 1)
    with session_scope(empty_database_url) as session:
        leases.mark_enqueued(session, [run_id])
        assert leases.claim_run(session, run_id, worker="lost", lease_seconds=-1) is not None
    report = reconcile_once(settings, celery)
    assert (report.expired, report.resent) == ([run_id], [run_id])
    assert pending_run_ids(celery, settings.queue_name) == {run_id}
    with session_scope(empty_database_url) as session:
        assert run_store.get_run(session, run_id).status == run_store.QUEUED
