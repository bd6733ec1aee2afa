"""The worker's entry point: `celery -A worker.celery_app worker`."""

from groklab.dispatch import make_celery
from groklab.settings import get_settings
from worker import observability  # noqa: F401  (JSON logs with run ids, worker /metrics)

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]
