"""Engine and session factory for a database URL, with SQLite tuned for an api and workers at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the api read while a worker writes; foreign keys are off by default there.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def commit(session: Session) -> None:
    """End the session's transaction here, in the middle of a unit of work, because what the
    caller does next needs what it wrote stored and visible to other processes: a message about
    runs goes out (the worker must find them), a refusal must keep the cancels made before it
    (the request's session rolls back on an error), another store's transactions must not wait
    on this one's locks.

    Transactions are opened and committed in this layer only: by `session_scope` (the api's
    session per request is one) at the end of the unit of work, and by this before it."""
    session.commit()


def database_reachable(url: str) -> bool:
    """Whether the database answers a trivial query now (readiness checks, `groklab check`)."""
    try:
        with session_scope(url) as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def create_database(admin_url: str, prefix: str = "groklab_test") -> tuple[str, str]:
    """A fresh, empty PostgreSQL database on the server of `admin_url` (a plain postgresql:// URL
    of a database to connect to meanwhile): its name and its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return name, f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
