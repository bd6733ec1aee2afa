"""The fork lifecycle: a child run waits for its parent, starts from its final state, fails with it.

A child (ungrokking's phase 2) is planned with a `parent_index` or `parent_run_id`
(engine.experiments.PlannedRun) and stored as a queued run with `parent_run_id`. Then:
- it waits: submission sends only runs without a parent in the plan, and the reconciler sends a
  child only once its parent succeeded (`store.forks.parent_succeeded`);
- when the parent finishes, `hand_off` sends its waiting children if it succeeded, or fails them;
  the children of all the parents an ensemble finished go out together, in full packs;
- when a worker takes it, `start_child` gives it the parent's final checkpoint (the function
  `python -m engine` uses too) and a copy of the parent's series, so its own series tell its
  whole history. Both are skipped for a child that is resuming from a checkpoint of its own.

The SQL of all three is in groklab/store/forks.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from celery import Celery
from sqlalchemy.orm import Session

from engine.checkpoint import start_from_parent
from groklab.dispatch import dispatch_runs
from groklab.checkpoint_format import RunCheckpoints
from groklab.settings import Settings
from groklab.store import forks as fork_store
from groklab.store import runs as run_store
from groklab.store.database import session_scope


def start_child(settings: Settings, child: RunCheckpoints, parent_run_id: int) -> None:
    """The child's first checkpoint is its parent's latest, read from the checkpoint store, so the
    child may train on any host."""

    def copy_series() -> None:
        with session_scope(settings.resolved_database_url) as session:
            fork_store.copy_parent_points(session, parent_run_id, child.run_id)

    start_from_parent(RunCheckpoints(child.store, parent_run_id), child, copy_series)


def hand_off(session: Session, celery: Celery, settings: Settings, finished: Mapping[int, str]) -> None:
    """The waiting children of parents that just finished ({run id: final status}), in the
    transaction that recorded those statuses: a failed or cancelled parent's children fail, and
    the succeeded parents' children go out in one `dispatch_runs`, which commits and packs them
    across parents (an ensemble's parents finish together, so their children fill whole packs).

    Committing the parents' statuses with their children's enqueued_at is what keeps a child from
    being sent twice: the reconciler sends a child only once its parent succeeded and its own last
    message is older than requeue_grace_seconds. A worker lost after that commit but before the
    messages went out leaves the children queued with no message: the reconciler sends them then.
    """
    succeeded = []
    for parent_run_id, status in finished.items():
        if status == run_store.SUCCEEDED:
            succeeded.append(parent_run_id)
        else:
            fork_store.fail_children(session, parent_run_id, parent_status=status)
    children = fork_store.waiting_children(session, succeeded)
    if not children:
        return
    dispatch_runs(session, celery, children, ensemble_size=settings.ensemble_size)
