"""The end of runs: record their final statuses, then run the finish hooks.

Four hooks, in this order:
- the fork hand-off (groklab/forks.py), in the transaction that records the statuses: a
  succeeded parent's waiting children are sent, a failed or cancelled one's fail with it;
- each succeeded run's analysis kept in the answer cache (groklab/run_labels.py), so an experiment
  page's first open reads analyses, not every point;
- each finished experiment's kind hook (groklab/kinds.py: a d_crit_search plans its next round),
  after that commit, one experiment at a time; a hook that fails is logged and left to the
  reconciler's next pass, since the runs' ends are stored;
- then, for an experiment whose runs have all finished (the kind hook added none), the answer to
  the experiment page's overlay query (groklab/overlay_query.py) kept in the answer cache, so the
  page's first open reads it instead of folding every point (3.7-6.2 s for 200 runs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from groklab import analysis, forks, kinds, metric_answers
from groklab.overlay_query import overlay_query
from groklab.run_labels import analyse_stored_runs
from groklab.settings import Settings
from groklab.lifecycle import FINISHED_STATUSES
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope

log = logging.getLogger(__name__)

LEASE_LOST = "lease-lost"
"""The outcome of a run whose lease moved on (another worker owns it now): nothing recorded."""


@dataclass(frozen=True)
class RunEnding:
    """How a run its worker holds the lease of ended."""

    lease: leases.Lease
    experiment_id: int
    status: str
    error: str | None = None
    stopped_early_at_step: int | None = None


def finish_runs(settings: Settings, celery: Celery, endings: Sequence[RunEnding]) -> dict[int, str]:
    """Record the runs' final statuses and hand off their waiting children, in one transaction;
    then run their experiments' kind hooks. Each run's outcome: its status, or LEASE_LOST."""
    if not endings:
        return {}
    outcomes: dict[int, str] = {}
    with session_scope(settings.resolved_database_url) as session:
        for ending in endings:
            finished = leases.finish(
                session,
                ending.lease,
                status=ending.status,
                error=ending.error,
                stopped_early_at_step=ending.stopped_early_at_step,
            )
            outcomes[ending.lease.run_id] = ending.status if finished else LEASE_LOST
        forks.hand_off(session, celery, settings, {run_id: status for run_id, status in outcomes.items() if status != LEASE_LOST})
    keep_analyses(settings, [run_id for run_id, status in outcomes.items() if status == run_store.SUCCEEDED])
    finished_experiments = {e.experiment_id for e in endings if outcomes[e.lease.run_id] != LEASE_LOST}
    for experiment_id in sorted(finished_experiments):
        try:
            with session_scope(settings.resolved_database_url) as session:
                kinds.runs_finished(session, celery, settings, run_store.get_experiment(session, experiment_id))
        except Exception:
            # The runs' ends are stored; the reconciler's next pass does it instead (a search's round).
            log.exception("could not run the finish hook of experiment %s", experiment_id)
    for experiment_id in sorted(finished_experiments):
        keep_overlay_answer(settings, experiment_id)
    return outcomes


def keep_analyses(settings: Settings, run_ids: list[int]) -> None:
    """Analyse the runs that just succeeded, with the default thresholds, into the answer cache:
    the experiment page's first open then reads 200 analyses, not 800,000 points. A failure here
    loses nothing: the api computes and keeps an analysis that is not there."""
    if not run_ids or settings.answer_cache_bytes == 0:
        return
    try:
        with session_scope(settings.resolved_database_url) as session:
            runs = [run_store.get_run(session, run_id) for run_id in run_ids]
            analyse_stored_runs(session, runs, analysis.Thresholds(), cache_bytes=settings.answer_cache_bytes)
    except Exception:
        log.exception("could not keep the analyses of runs %s", run_ids)


def keep_overlay_answer(settings: Settings, experiment_id: int) -> str | None:
    """Once all of the experiment's runs have finished, compute the experiment page's first query
    (its default overlay query, as the api answers it for the experiment's owner) into the answer
    cache. A failure here loses nothing: the api computes the answer on the page's first open.
    Returns the cache's outcome ("miss": computed and kept, "hit": already there), None if not."""
    if settings.answer_cache_bytes == 0:
        return None
    try:
        with session_scope(settings.resolved_database_url) as session:
            # Statuses from the covering index first: this runs at every run's end, and loading
            # every run's spec each time would grow with the square of the experiment's size.
            statuses = run_store.experiment_runs(session, [experiment_id])[experiment_id].status_counts
            if not statuses or any(status not in FINISHED_STATUSES for status in statuses):
                return None  # runs still to train (a fork's children, a search's next round)
            experiment = run_store.get_experiment(session, experiment_id)
            query = overlay_query(experiment, list(experiment.runs)).query
            runs = metric_answers.select_runs(session, query, experiment.owner)
            fmt = query.format or "json"
            return metric_answers.answer(session, settings, query, fmt, runs, experiment.owner).cache
    except Exception:
        log.exception("could not keep the overlay answer of experiment %s", experiment_id)
        return None
