"""Worker operations hooks: JSON logs carrying the task's run and experiment ids, and the
Prometheus server on GROKLAB_WORKER_METRICS_PORT (groklab's workers use the solo pool, so the
worker's main process is the one that trains and counts)."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun, worker_init
from sqlalchemy.exc import SQLAlchemyError

from groklab import telemetry
from groklab.errors import GroklabError
from groklab.json_logs import Bound, bind, configure_logging, unbind
from groklab.settings import get_settings
from groklab.store import runs as run_store
from groklab.store.database import session_scope

log = logging.getLogger(__name__)
_bound: dict[str, Bound] = {}


@setup_logging.connect
def _json_logs(loglevel: str | int | None = None, **_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own handlers.
    configure_logging(loglevel or "INFO")


@worker_init.connect
def _metrics_server(**_: Any) -> None:
    port = get_settings().worker_metrics_port
    if port:
        telemetry.start_metrics_server(port)
        log.info("worker metrics on :%s/metrics", port)


@task_prerun.connect
def _bind_run(task_id: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    run_ids = args[0] if args else (kwargs or {}).get("run_ids")
    # A pack of several runs logs each run's lines under that run's ids (worker/tasks.py).
    if not isinstance(run_ids, list) or len(run_ids) != 1:
        return
    run_id = run_ids[0]
    experiment_id = None
    try:
        with session_scope(get_settings().resolved_database_url) as session:
            experiment_id = run_store.get_run(session, run_id).experiment_id
    except (GroklabError, SQLAlchemyError):  # the task reports a missing run or an outage itself
        log.debug("run %s: no experiment id for the log context", run_id, exc_info=True)
    _bound[task_id] = bind(run_id=run_id, experiment_id=experiment_id)


@task_postrun.connect
def _unbind_run(task_id: str, **_: Any) -> None:
    tokens = _bound.pop(task_id, None)
    if tokens is not None:
        unbind(tokens)
