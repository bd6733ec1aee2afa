"""Deleting an experiment: its runs, metric points and rollups, checkpoints and idempotency keys.

A worker holding a run's lease still writes to it, so a deletion never races one: it cancels
the experiment's queued runs at once, asks its running runs to stop, and is refused (409 naming
them) until they have; the client's `delete_experiment` retries until then. Runs of another
experiment forked from one of its runs refuse it too while they are unfinished, since they
start from that run's final checkpoint; finished forks keep the copy of its series they hold
and only lose the link to their parent (the foreign key sets it to null).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from groklab.errors import Conflict
from groklab.settings import Settings
from groklab.store import forks as fork_store
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import commit

RETRY_AFTER_SECONDS = 2
"""A running run stops within about a second of its cancel."""


def delete_experiment(session: Session, settings: Settings, experiment_id: int, *, owner: str) -> None:
    experiment = run_store.get_experiment(session, experiment_id, owner=owner)
    forking = fork_store.experiments_forking_from(session, experiment_id)
    if forking:
        raise Conflict(
            f"experiment {experiment_id} cannot be deleted: unfinished runs of experiment(s) "
            f"{', '.join(map(str, forking))} continue from its runs; cancel or delete those first",
            field="experiment_id",
        )
    running = run_store.cancel_experiment(session, experiment)
    # Committed before anything else: the cancels stand even when the deletion must wait, and
    # the checkpoint store's own transactions must not queue behind this one's locks (SQLite).
    commit(session)
    if running:
        raise Conflict(
            f"experiment {experiment_id} cannot be deleted yet: runs {', '.join(map(str, running))} "
            "are running; they were asked to stop and its queued runs are cancelled: retry in a "
            "few seconds",
            field="experiment_id",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    checkpoints = CheckpointStore.from_settings(settings)
    for run in experiment.runs:
        # Before the runs: their index rows would cascade, but the blobs they name would not.
        checkpoints.delete_run(run.id)
    run_store.delete_experiment(session, experiment_id)
    commit(session)
