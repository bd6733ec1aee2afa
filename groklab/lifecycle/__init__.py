"""The run lifecycle: a run's states and the moves allowed between them.

    queued ──dispatch──> enqueued ──a worker claims it──> running ──> succeeded | failed | cancelled
      │                     │                                │
      └──> cancelled        └──> cancelled                   └──> queued (its worker shut down, gave
      └──> failed (its parent failed)                                  way, or was lost)
    succeeded ──continue──> queued          failed | cancelled ──retry──> queued

`enqueued` is not a stored status: it is a `queued` run whose message is out (groklab.dispatch
sets its `enqueued_at`); a worker claims it, or the reconciler sends it again when no worker took
it within `requeue_grace_seconds`. A run that goes back to `queued` has its `enqueued_at` cleared.

Every status a run's row takes is a move of `TRANSITIONS`: the database layer's conditional
updates (`groklab.store.runs.move`, and through it the leases, cancels, fork failures, continues
and retries) check each one with `check_transition`, so a move the lifecycle does not allow is
refused with IllegalTransition before any row changes. What happens when runs finish (fork
hand-off, a kind's hook such as a search's next round) is `groklab/lifecycle/finish.py`.

This module imports nothing: every layer reads its statuses here (the database layer, the
service logic, the worker, the Python client, which must not load the server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, get_args

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""The statuses a run's row stores."""
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = RUN_STATUSES
FINISHED_STATUSES: tuple[RunStatus, ...] = (SUCCEEDED, FAILED, CANCELLED)
"""A run in one of these trains no more until a user continues or retries it."""
ENQUEUED = "enqueued"
"""A queued run whose message was sent (see the module's docstring); stored as `queued`."""

TRANSITIONS: Mapping[str, frozenset[str]] = {
    # claimed by a worker; cancelled before it started; failed with its parent (a fork)
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    # its outcome; or back to the queue: its worker shut down, gave way, or was lost
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    SUCCEEDED: frozenset({QUEUED}),  # continued with a new phase
    FAILED: frozenset({QUEUED}),  # retried
    CANCELLED: frozenset({QUEUED}),  # retried
}
"""The stored status a run may move to from each stored status."""


class IllegalTransition(ValueError):
    """A move of a run's status that the lifecycle does not allow (a bug in the caller)."""


def check_transition(from_statuses: Iterable[str], to_status: str) -> None:
    """Raise IllegalTransition unless every one of `from_statuses` may move to `to_status`."""
    for status in from_statuses:
        if to_status not in TRANSITIONS.get(status, frozenset()):
            raise IllegalTransition(f"a run cannot move from {status!r} to {to_status!r}")
