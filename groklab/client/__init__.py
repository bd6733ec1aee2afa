"""The client side of groklab: what a user's machine runs against a groklab server over HTTP.

    from groklab.client import Client

- `http`: the typed Python client of the HTTP API (`Client`, `Run`, `Experiment`); `errors`: what
  it raises (`ClientError` and its kinds).
- `commands`: the `groklab` command's client subcommands (submit, status, watch, metrics, ...).
- `lens`: a downloaded transformer as TransformerLens sees it (needs torch; imported on use).
- `reproduce` and `report/`: `groklab reproduce`, the paper's experiments and their HTML report.

Importing this package imports neither torch nor the server's libraries (SQLAlchemy, FastAPI,
Celery), so the client commands start in a fraction of a second.
"""

from groklab.client.errors import ApiError, ClientError, ServerUnreachable, ServiceUnavailable, Unauthorized
from groklab.client.http import (
    DEFAULT_RETRY_SECONDS,
    DEFAULT_URL,
    Client,
    Experiment,
    ExperimentRef,
    Run,
    RunRef,
    flat_fields,
    load_spec,
    watch_runs,
)

__all__ = [
    "DEFAULT_RETRY_SECONDS",
    "DEFAULT_URL",
    "ApiError",
    "Client",
    "ClientError",
    "Experiment",
    "ExperimentRef",
    "Run",
    "RunRef",
    "ServerUnreachable",
    "ServiceUnavailable",
    "Unauthorized",
    "flat_fields",
    "load_spec",
    "watch_runs",
]
