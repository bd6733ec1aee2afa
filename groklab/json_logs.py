"""JSON log lines for the api and the worker, each carrying the run and experiment ids in context."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

run_id_var: ContextVar[int | None] = ContextVar("groklab_run_id", default=None)
experiment_id_var: ContextVar[int | None] = ContextVar("groklab_experiment_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged too.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": run_id_var.get(),
            "experiment_id": experiment_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


Bound = tuple[Token[int | None], Token[int | None]]


def bind(*, run_id: int | None = None, experiment_id: int | None = None) -> Bound:
    """Sets the ids for this context's log lines; hand the result to `unbind` to restore them."""
    return run_id_var.set(run_id), experiment_id_var.set(experiment_id)


def unbind(tokens: Bound) -> None:
    run_id_var.reset(tokens[0])
    experiment_id_var.reset(tokens[1])


@contextmanager
def log_context(*, run_id: int | None = None, experiment_id: int | None = None) -> Iterator[None]:
    tokens = bind(run_id=run_id, experiment_id=experiment_id)
    try:
        yield
    finally:
        unbind(tokens)


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """One JSON handler on the root logger; uvicorn's loggers go through it instead of their own.

    uvicorn's access log is silenced: the api's request middleware logs each request with its
    route, status, duration and ids. Calling this again changes nothing.
    """
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in ("uvicorn", "uvicorn.error", "celery"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").handlers.clear()
    logging.getLogger("uvicorn.access").propagate = False
