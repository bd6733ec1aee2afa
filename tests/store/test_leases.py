"""Run leases on SQLite and PostgreSQL: an expired lease re-queues its run and fences its old worker."""

from __future__ import annotations

from datetime import timedelta

import pytest

from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from groklab.store.models import utcnow


def _queued_run(url: str) -> int:
    upgrade(url)
    with session_scope(url) as session:
        experiment = run_store.create_experiment(session, name=None, spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)])
        return experiment.runs[0].id


def test_expire_leases_requeues_only_expired_runs_and_fences_their_worker(empty_database_url: str) -> None:
    url = empty_database_url
    lost, alive = _queued_run(url), _queued_run(url)
    with session_scope(url) as session:
        old = leases.claim_run(session, lost, worker="w1", lease_seconds=-1)
        live = leases.claim_run(session, alive, worker="w2", lease_seconds=600)
    assert old is not None and live is not None
    with session_scope(url) as session:
        assert leases.expire_leases(session) == [lost]
    with session_scope(url) as session:
        run = run_store.get_run(session, lost)
        assert (run.status, run.lease_token, run.enqueued_at) == (run_store.QUEUED, old.token + 1, None)
        assert run_store.get_run(session, alive).status == run_store.RUNNING
        with pytest.raises(leases.LeaseLost):
            leases.renew(session, old, lease_seconds=60)
        assert not leases.finish(session, old, status=run_store.SUCCEEDED)
    with session_scope(url) as session:
        assert run_store.get_run(session, lost).status == run_store.QUEUED
        # The re-queued run is claimable again, under a newer token.
        again = leases.claim_run(session, lost, worker="w3", lease_seconds=60)
        assert again is not None and again.token > old.token


def parent_and_child(url: str) -> tuple[int, int]:
    """A migrated database's new experiment of two queued runs, the second forked from the first."""
    upgrade(url)
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session,
            name=None,
            spec={},
            runs=[run_store.NewRun(spec={}, total_steps=10), run_store.NewRun(spec={}, total_steps=10, parent_index=0)],
        )
        return experiment.runs[0].id, experiment.runs[1].id


def test_runs_to_send_skips_recently_sent_runs_and_forks_of_unfinished_parents(empty_database_url: str) -> None:
    url = empty_database_url
    parent, _ = parent_and_child(url)
    with session_scope(url) as session:
        assert leases.runs_to_send(session, older_than=utcnow()) == [parent]
        leases.mark_enqueued(session, [parent])
    with session_scope(url) as session:
        assert leases.runs_to_send(session, older_than=utcnow() - timedelta(minutes=1)) == []
        assert leases.runs_to_send(session, older_than=utcnow() + timedelta(minutes=1)) == [parent]


def test_release_worker_runs_requeues_a_dead_workers_runs_at_once_and_fences_it(empty_database_url: str) -> None:
    url = empty_database_url
    held, cancelling, other = _queued_run(url), _queued_run(url), _queued_run(url)
    with session_scope(url) as session:
        old = leases.claim_run(session, held, worker="dead@host", lease_seconds=600)
        doomed = leases.claim_run(session, cancelling, worker="dead@host", lease_seconds=600)
        live = leases.claim_run(session, other, worker="alive@host", lease_seconds=600)
    assert old is not None and doomed is not None and live is not None
    with session_scope(url) as session:
        run_store.request_cancel(session, cancelling)
    with session_scope(url) as session:
        assert leases.release_worker_runs(session, "dead@host", reason="worker dead@host died") == [held]
    with session_scope(url) as session:
        run = run_store.get_run(session, held)
        assert (run.status, run.lease_token, run.lease_expires_at) == (run_store.QUEUED, old.token + 1, None)
        assert run_store.run_events(session, held)[-1].message == "worker dead@host died"
        # Nobody is left to stop a run whose cancel was asked for: it is cancelled, not re-queued.
        assert run_store.get_run(session, cancelling).status == run_store.CANCELLED
        assert run_store.get_run(session, other).status == run_store.RUNNING
        with pytest.raises(leases.LeaseLost):
            leases.renew(session, old, lease_seconds=60)
