"""The run lifecycle's moves (groklab.lifecycle): a move it does not allow is refused before any
row changes, and every move the server makes is one it allows."""

from __future__ import annotations

import itertools

import pytest

from groklab import lifecycle
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from tests.store.test_leases import _queued_run


def test_an_illegal_move_is_refused_and_changes_nothing(empty_database_url: str) -> None:
    url = empty_database_url
    run_id = _queued_run(url)
    with session_scope(url) as session:
        lease = leases.claim_run(session, run_id, worker="w", lease_seconds=60)
        assert lease is not None and leases.finish(session, lease, status=run_store.SUCCEEDED)
    with session_scope(url) as session:
        events_before = len(run_store.run_events(session, run_id))
        # A finished run never trains again without a continue (succeeded -> queued).
        with pytest.raises(lifecycle.IllegalTransition, match="'succeeded' to 'running'"):
            run_store.move(session, run_id, from_statuses=[run_store.SUCCEEDED], to_status=run_store.RUNNING)
        with pytest.raises(lifecycle.IllegalTransition, match="'queued' to 'succeeded'"):
            run_store.move(session, run_id, from_statuses=[run_store.QUEUED], to_status=run_store.SUCCEEDED)
    with session_scope(url) as session:
        run = run_store.get_run(session, run_id)
        assert run.status == run_store.SUCCEEDED and len(run_store.run_events(session, run_id)) == events_before
        # The move it allows goes through the same function.
        assert run_store.move(session, run_id, from_statuses=[run_store.SUCCEEDED], to_status=run_store.QUEUED)


def test_check_transition_follows_the_table_and_finished_runs_only_go_back_to_the_queue() -> None:
    allowed = {(a, b) for a, targets in lifecycle.TRANSITIONS.items() for b in targets}
    assert (lifecycle.QUEUED, lifecycle.RUNNING) in allowed and (lifecycle.RUNNING, lifecycle.QUEUED) in allowed
    for source, target in itertools.product(lifecycle.RUN_STATUSES, repeat=2):
        if (source, target) in allowed:
            lifecycle.check_transition([source], target)
        else:
            with pytest.raises(lifecycle.IllegalTransition):
                lifecycle.check_transition([source], target)
    # A finished run moves only back to the queue; nothing moves to a status that is not stored.
    for finished in lifecycle.FINISHED_STATUSES:
        assert lifecycle.TRANSITIONS[finished] == {lifecycle.QUEUED}
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.check_transition([lifecycle.QUEUED], lifecycle.ENQUEUED)
