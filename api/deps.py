"""FastAPI dependencies: settings, a database session per request, the Celery app, the checkpoint
store (auth: api/auth.py)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlalchemy.orm import Session

from groklab.outages import DATABASE, OUTAGES
from groklab.settings import Settings, get_settings
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from worker.celery_config import make_celery

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.resolved_database_url) as session:
        yield session
    OUTAGES[DATABASE].reachable()  # committed: a database outage this api saw is over


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


@lru_cache
def get_checkpoint_store() -> CheckpointStore:
    # One per process: an S3 store holds a client with its connection pool.
    return CheckpointStore.from_settings(get_settings())


# scope="function": the session commits when the route returns, before the response is sent, so
# a client that got its 200 reads what it wrote. With the default ("request") the commit came
# after the answer: a DELETE right after a cancel's 200 could still find the run queued.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CeleryDep = Annotated[Celery, Depends(get_celery)]
CheckpointStoreDep = Annotated[CheckpointStore, Depends(get_checkpoint_store)]
