"""Shared fixtures: real PostgreSQL, Redis, api and Celery worker processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from groklab.store.migrate import upgrade
from tests.local_seaweedfs import BUCKET, SeaweedFS
from tests.local_servers import start_postgres, start_redis
from tests.services import (
    Stack,
    TestServers,
    create_pg_database,
    drop_pg_database,
    redis_url,
    service_env,
    use_servers,
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM or a closed terminal ends the run as Ctrl-C does, so that the session fixtures'
    # teardown stops the private servers instead of leaving them behind.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    # Ctrl-C too, even where the run inherited SIGINT ignored (a child of an xdist worker does):
    # Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The module that trains longest (the P=47 dynamics on two workers, minutes): first, so that under
# pytest-xdist (bin/test) the other test process runs the rest of the suite beside it, not after it.
LONGEST_FIRST = ("tests/e2e/test_experiment_kinds.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))


@pytest.fixture(scope="session", autouse=True)
def test_servers() -> Iterator[TestServers]:
    """PostgreSQL and Redis for the whole run: private ones on free loopback ports, started from
    the test extras' binaries and removed at the end, unless GROKLAB_TEST_PG_ADMIN (a libpq URL
    of a database whose user may create databases) or GROKLAB_TEST_REDIS name existing ones."""
    cleanups = []
    pg_admin_url = os.environ.get("GROKLAB_TEST_PG_ADMIN")
    if not pg_admin_url:
        postgres = start_postgres()
        cleanups.append(postgres.remove)
        pg_admin_url = postgres.admin_url()
    broker_url = os.environ.get("GROKLAB_TEST_REDIS")
    if not broker_url:
        broker = start_redis()
        cleanups.append(broker.kill)
        broker_url = broker.url
    servers = TestServers(pg_admin_url=pg_admin_url, redis_url=broker_url)
    use_servers(servers)
    yield servers
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A private SeaweedFS S3 server with an empty BUCKET, started when a test first needs it."""
    server = SeaweedFS()
    try:
        server.start()
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.remove()


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
    # Packing on, as on a GPU cluster, so that the end-to-end tests train ensembles.
    env = service_env(pg_database, redis_url(), data_dir, GROKLAB_ENSEMBLE_SIZE="8")
    stack = Stack(env=env, log_dir=data_dir)
    stack.start_worker("w1")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An api that requires keys, with small submission and storage limits and browser origins configured.

    It has its own database and queue and no worker, so runs stay queued and the queued-work
    limit is deterministic; every test uses owners of its own so that limits do not interact.
    """
    name, url = create_pg_database()
    upgrade(url)
    data_dir = tmp_path_factory.mktemp("auth-stack")
    env = service_env(
        url,
        redis_url(),
        data_dir,
        GROKLAB_AUTH="required",
        GROKLAB_SUBMISSIONS_PER_MINUTE="5",
        GROKLAB_MAX_QUEUED_STEPS_PER_OWNER="10000",
        GROKLAB_MAX_STORED_BYTES_PER_OWNER="10000000",
        GROKLAB_CORS_ORIGINS="https://dash.example, http://localhost:5173",
        GROKLAB_RECONCILE_SECONDS="0",
    )
    stack = Stack(env=env, log_dir=data_dir)
    stack.start_api()
    yield stack
    stack.stop()
    redis.Redis.from_url(redis_url()).delete(env["GROKLAB_QUEUE_NAME"])
    drop_pg_database(name)


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


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind groklab runs on (not migrated)."""
    return request.getfixturevalue("fresh_pg_url" if request.param == "postgresql" else "sqlite_url")
