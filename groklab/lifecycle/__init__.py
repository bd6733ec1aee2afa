"""The run lifecycle: a run's states and the moves between them.

This module is the vocabulary every layer shares (the database layer, the service logic, the
worker, the Python client), so it imports nothing: the client reads `FINISHED_STATUSES` from here
without loading the server.
"""

from __future__ import annotations

from typing import Literal, get_args

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""The statuses a run's row stores."""
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = RUN_STATUSES
FINISHED_STATUSES: tuple[RunStatus, ...] = (SUCCEEDED, FAILED, CANCELLED)
"""A run in one of these trains no more until a user continues or retries it."""
