"""The worker's entry point: `celery -A worker.celery_app worker`."""

import warnings

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
warnings.filterwarnings("ignore", message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss", category=CPendingDeprecationWarning)
app.conf.include = ["worker.tasks"]


@signals.worker_init.connect
@signals.worker_process_init.connect
def apply_device_settings(**_: object) -> None:
    """Process-wide torch settings, before the worker takes a task: worker_init in the worker's
    main process, worker_process_init in each pool process (a prefork pool's children; the solo
    pool, which trains in the main process, sends it too). Setting the flags twice is harmless."""
    configure_tf32(get_settings().tf32)
