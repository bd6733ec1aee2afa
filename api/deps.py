"""FastAPI dependencies: settings, a database session per request, the Celery app."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from celery import Celery
from fastapi import Depends
from sqlalchemy.orm import Session

from groklab.queue import make_celery
from groklab.settings import Settings, get_settings
from groklab.store.database import session_factory


def get_session(settings: Settings = Depends(get_settings)) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())
