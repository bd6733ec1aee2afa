"""Fair share: a short run does not wait behind a long one.

A run is short when its total steps x model parameters (engine.spec.parameter_count) is at most
`short_run_parameter_steps`: that product is what its training costs, known from the spec alone.
Short runs go to the priority queue, long runs to the normal one, and every worker takes from the
priority queue first (worker.celery_config: Celery queues, consumed in order).

When a short run has waited `short_run_grace_seconds` (so no worker was free to take it), one
worker training long runs yields: the first whose conditional update wins the turn
(store.leases.take_turn), so one short run moves one long run aside, not every one. The yield is
the SIGTERM path of worker/tasks.py: checkpoint, release the lease, re-queue; its reason goes
into the run's status history. The yielded run goes to the end of the priority queue: it gets a
worker back after the short runs waiting before it, ahead of every run sent later and of every
long run. Once it resumed, it trains at least `yield_after_seconds` before it yields again, so
a steady stream of short runs slows a long run down but never holds it back for ever.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from engine.spec import RunSpec, parameter_count
from groklab.outages import DATABASE, OUTAGES, log_failure
from groklab.run_specs import spec_of
from groklab.settings import Settings
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.models import utcnow

log = logging.getLogger(__name__)


def is_short(spec: RunSpec, budget: int) -> bool:
    """Whether the run goes first and makes long runs yield to it (0: no run is short)."""
    return spec.total_steps * parameter_count(spec) <= budget


class YieldPoll:
    """Whether the task training `specs` should give its worker to a waiting short run; polled with
    should_stop, it asks the database at most every `cancel_poll_seconds`."""

    def __init__(self, settings: Settings, specs: list[RunSpec], *, resumed: bool) -> None:
        self.settings = settings
        budget = settings.short_run_parameter_steps
        self.enabled = budget > 0 and not all(is_short(spec, budget) for spec in specs)
        self.yields_from = time.monotonic() + (settings.yield_after_seconds if resumed else 0.0)
        self.asked_at = time.monotonic()
        self.short: dict[int, bool] = {}
        self.experiment: dict[int, int] = {}
        """Run id -> whether it is short, and its experiment: each is read once (neither changes)."""
        self.gave_way_to: list[int] | None = None

    def __call__(self) -> bool:
        if self.gave_way_to is not None:
            return True
        now = time.monotonic()
        if not self.enabled or now < self.yields_from or now - self.asked_at < self.settings.cancel_poll_seconds:
            return False
        self.asked_at = now
        try:
            self.gave_way_to = self._take_turn()
        except Exception as exc:  # training goes on; the next poll asks again
            log_failure(log, exc, "polling for waiting short runs")
        else:
            OUTAGES[DATABASE].reachable()
        return self.gave_way_to is not None

    def _take_turn(self) -> list[int] | None:
        waited = utcnow() - timedelta(seconds=self.settings.short_run_grace_seconds)
        with session_scope(self.settings.resolved_database_url) as session:
            waiting = leases.waiting_for_worker(session, older_than=waited)
            unknown = [run_id for run_id in waiting if run_id not in self.short]
            for run_id, (experiment_id, spec) in run_store.specs_of(session, unknown).items():
                self.experiment[run_id] = experiment_id
                self.short[run_id] = is_short(spec_of(run_id, spec), self.settings.short_run_parameter_steps)
            shorts = [run_id for run_id in waiting if self.short.get(run_id)]
            if not shorts:
                return None
            # The runs one message may carry (a pack: one experiment's, up to ensemble_size), so
            # that one short pack moves one long run aside, not one per member.
            experiment = self.experiment[shorts[0]]
            turn = [run_id for run_id in shorts if self.experiment[run_id] == experiment][: self.settings.ensemble_size]
            # session_scope commits the turn when this returns.
            return turn if leases.take_turn(session, turn, older_than=waited) else None
