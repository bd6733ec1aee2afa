"""Shared fixtures: real PostgreSQL, Redis, api and Celery worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from groklab.store.migrate import upgrade
from tests.services import REDIS_URL, Stack, create_pg_database, drop_pg_database, service_env


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database for the whole session; yields its URL."""
    name, url = create_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="session")
def pg_stack(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The production topology: PostgreSQL + Redis + one api + one worker, over HTTP."""
    data_dir = tmp_path_factory.mktemp("pg-stack")
    stack = Stack(env=service_env(pg_database, REDIS_URL, data_dir), log_dir=data_dir)
    stack.start_worker("w1")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture
def client(pg_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    name, url = create_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'groklab.db'}"
