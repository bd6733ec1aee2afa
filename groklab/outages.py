"""Outages of the database and the broker: telling them from bugs, and logging them in proportion.

A dependency that is down makes every reconciler pass, publish and request fail the same way,
many times a second; a traceback each time buries the log (one 15-minute PostgreSQL outage once
wrote 1.8 MB of them). An `OutageLog` says one WARNING when an outage starts, at most one summary
line a minute while it lasts, and one INFO with its duration when the dependency answers again;
the tracebacks go to DEBUG.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

DATABASE, BROKER = "database", "broker"
OUTAGE_ERRORS = (DBAPIError, BrokerOperationalError, RedisConnectionError, RedisTimeoutError)
"""The exception types `outage_of` may call an outage (DBAPIError includes OperationalError and
InterfaceError); the api's one 503 handler is registered for these."""
SUMMARY_SECONDS = 60.0


def outage_of(exc: BaseException) -> str | None:
    """ "database" or "broker" when `exc` says that dependency cannot be reached; None otherwise
    (a bug, or bad input, is not an outage)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return DATABASE
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return DATABASE
    if isinstance(exc, (BrokerOperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)):
        return BROKER
    return None


def log_failure(logger: logging.Logger, exc: BaseException, doing: str) -> None:
    """A periodic task's error: an outage goes to this process's outage log (once per outage),
    anything else is logged with its traceback, as a bug."""
    dependency = outage_of(exc)
    if dependency is None:
        logger.exception("%s failed", doing)
    else:
        OUTAGES[dependency].failed(exc, doing)


def first_line(exc: BaseException) -> str:
    """The exception's message without the SQL and the driver's extra lines."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


class OutageLog:
    """The log of one dependency's outages, as seen by one component (thread-safe)."""

    def __init__(self, logger: logging.Logger, dependency: str, *, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.dependency = dependency
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0
        self._summarised_at = 0.0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """A call that needed the dependency failed because it could not be reached."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self._since is None:
                self._since = self._summarised_at = now
                self.logger.warning("%s unreachable while %s: %s", self.dependency, doing, first_line(exc))
            elif now - self._summarised_at >= SUMMARY_SECONDS:
                self._summarised_at = now
                self.logger.warning(
                    "%s still unreachable after %.0f s (%d failed attempts so far): %s",
                    self.dependency, now - self._since, self._failures, first_line(exc),
                )  # fmt: skip
        self.logger.debug("%s unreachable while %s", self.dependency, doing, exc_info=exc)

    def reachable(self) -> None:
        """A call that needed the dependency went through; ends an outage if one was on."""
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            self.logger.info(
                "%s reachable again after %.0f s (%d failed attempts)",
                self.dependency, self._clock() - self._since, self._failures,
            )  # fmt: skip
            self._since, self._failures = None, 0


_log = logging.getLogger(__name__)
OUTAGES = {dependency: OutageLog(_log, dependency) for dependency in (DATABASE, BROKER)}
"""This process's view of each dependency (the api's requests, its reconciler and every sender
share it), so that an outage is one warning per process, whoever meets it first."""
