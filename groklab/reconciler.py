"""Keeps the broker in step with the database, which is the source of truth for runs.

Each pass (1) re-queues running runs whose lease expired (their worker was killed or lost) and
(2) re-sends queued runs that have no message in the broker (Redis restarted or flushed, a
publish failed, a forked run whose parent just finished), and (3) plans the next round of a
d_crit_search whose runs all finished with no round after them. Sending twice is harmless: a worker
trains a run only if it wins the conditional claim in the database. A worker known to be dead
(`groklab up` saw it exit) has its runs handed back at once, without waiting for the lease.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from celery import Celery

from groklab.dispatch import dispatch_runs, pending_run_ids
from groklab.outages import DATABASE, OUTAGES, log_failure
from groklab.search_rounds import advance_waiting_searches
from groklab.settings import Settings
from groklab.store import leases
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from groklab.store.models import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    expired: list[int]
    resent: list[int]
    planned: list[int]
    """Runs of d_crit_search rounds that no worker had planned (groklab/search_rounds.py)."""


def reconcile_once(settings: Settings, celery: Celery) -> ReconcileReport:
    url = settings.resolved_database_url
    with session_scope(url) as session:
        expired = leases.expire_leases(session)
    with session_scope(url) as session:
        candidates = leases.runs_to_send(session, older_than=utcnow() - timedelta(seconds=settings.requeue_grace_seconds))
    resent: list[int] = []
    if candidates:
        # An expired run's old message is held by its dead worker: always send a new one.
        in_broker = pending_run_ids(celery, settings.queue_name)
        resent = [run_id for run_id in candidates if run_id in expired or (in_broker is not None and run_id not in in_broker)]
    if resent:
        with session_scope(url) as session:
            unsent = dispatch_runs(session, celery, resent, ensemble_size=settings.ensemble_size)
        resent = [run_id for run_id in resent if run_id not in unsent]  # the rest: the next pass
    if expired or resent:
        log.warning("reconciler: re-queued expired runs %s, re-sent runs %s", expired, resent)
    planned = advance_waiting_searches(settings, celery)
    return ReconcileReport(expired=expired, resent=resent, planned=planned)


def sweep_orphan_checkpoints(settings: Settings) -> list[str]:
    """Delete checkpoint blobs that no index row names once they are checkpoint_orphan_seconds
    old (a worker died between writing one and indexing it); the keys deleted."""
    orphans = CheckpointStore.from_settings(settings).delete_orphans()
    if orphans:
        log.warning("reconciler: deleted %d orphaned checkpoint blob(s): %s", len(orphans), orphans[:10])
    return orphans


def hand_back_worker_runs(settings: Settings, celery: Celery, worker: str, *, reason: str) -> list[int]:
    """Re-queue and re-send the runs of a worker known to be dead (`groklab up` saw it exit),
    without waiting for their leases to expire."""
    with session_scope(settings.resolved_database_url) as session:
        run_ids = leases.release_worker_runs(session, worker, reason=reason)
        if run_ids:
            dispatch_runs(session, celery, run_ids, ensemble_size=settings.ensemble_size)
    if run_ids:
        log.warning("handed back runs %s of dead worker %s", run_ids, worker)
    return run_ids


class ReconcilerThread(threading.Thread):
    """Runs reconcile passes every `settings.reconcile_seconds` until stopped."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        super().__init__(name="groklab-reconciler", daemon=True)
        self.settings = settings
        self.celery = celery
        self._stop_event = threading.Event()

    def run(self) -> None:
        swept_at = -math.inf
        while not self._stop_event.wait(self.settings.reconcile_seconds):
            try:
                reconcile_once(self.settings, self.celery)
            except Exception as exc:
                # The database or broker may be down for a while; the next pass tries again,
                # and the outage is logged once, not once a pass.
                log_failure(log, exc, "reconciling runs")
            else:
                OUTAGES[DATABASE].reachable()
            # Listing the whole checkpoint store is too much for every pass.
            if time.monotonic() - swept_at >= self.settings.orphan_sweep_seconds:
                swept_at = time.monotonic()
                try:
                    sweep_orphan_checkpoints(self.settings)
                except Exception as exc:
                    log.warning("orphaned checkpoint sweep failed, next in %.0f s: %s", self.settings.orphan_sweep_seconds, exc)

    def stop(self) -> None:
        self._stop_event.set()
