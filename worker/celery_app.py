"""The worker's entry point: `celery -A worker.celery_app worker`."""

from celery import signals

from engine.device import configure_tf32
from groklab.dispatch import make_celery
from groklab.settings import get_settings
from worker import observability  # noqa: F401  (JSON logs with run ids, worker /metrics)

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@signals.worker_init.connect
@signals.worker_process_init.connect
def apply_device_settings(**_: object) -> None:
    """Process-wide torch settings, before the worker takes a task: worker_init in the worker's
    main process, worker_process_init in each pool process (a prefork pool's children; the solo
    pool, which trains in the main process, sends it too). Setting the flags twice is harmless."""
    configure_tf32(get_settings().tf32)
