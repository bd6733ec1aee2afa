"""The worker's entry point: `celery -A worker.celery_app worker`."""

import os
import warnings
from pathlib import Path

from celery import signals
from celery.exceptions import CPendingDeprecationWarning

from engine.device import configure_tf32
from groklab.settings import get_settings
from worker import observability  # noqa: F401  (JSON logs with run ids, worker /metrics)
from worker.celery_config import make_celery

app = make_celery(get_settings())
# Celery warns at every broker loss that worker_cancel_long_running_tasks_on_connection_loss turns
# True in Celery 6, even when a project sets it: groklab sets it False on purpose (make_celery
# says why), so the warning is noise in the log of every outage.
warnings.filterwarnings(
    "ignore", message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss", category=CPendingDeprecationWarning
)
app.conf.include = ["worker.tasks"]


@signals.worker_init.connect
@signals.worker_process_init.connect
def apply_device_settings(**_: object) -> None:
    """Process-wide torch settings, before the worker takes a task: worker_init in the worker's
    main process, worker_process_init in each pool process (a prefork pool's children; the solo
    pool, which trains in the main process, sends it too). Setting them twice is harmless."""
    settings = get_settings()
    configure_tf32(settings.tf32)
    lower_cpu_priority(settings.worker_nice)


def lower_cpu_priority(nice: int) -> None:
    """Every thread of this process at nice value `nice` at least (never raised back: an operator
    who started the worker at a lower priority keeps it). Linux keeps a nice value per thread and
    a new thread takes its creator's: the threads that exist now (Celery's, torch's) are reniced one
    by one, and those started later inherit it."""
    if nice <= 0:
        return
    tasks = Path("/proc/self/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
