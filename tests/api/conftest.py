"""The metric-read tests run against an api on each database groklab runs on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import httpx
import pytest

from groklab.store.migrate import upgrade
from tests.services import Stack, service_env


class Backend(NamedTuple):
    client: httpx.Client  # the api over HTTP
    database_url: str  # the database it reads, which the tests write points into


@pytest.fixture(scope="session")
def sqlite_api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """An api on a SQLite file, as in the embedded default; no worker (the tests write points)."""
    data_dir = tmp_path_factory.mktemp("sqlite-api")
    url = f"sqlite:///{data_dir / 'groklab.db'}"
    upgrade(url)
    stack = Stack(env=service_env(url, None, data_dir), log_dir=data_dir)
    stack.start_api()
    yield stack, url
    stack.stop()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgresql":
        base_url, url = request.getfixturevalue("pg_stack").base_url, request.getfixturevalue("pg_database")
    else:
        stack, url = request.getfixturevalue("sqlite_api_stack")
        base_url = stack.base_url
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield Backend(client, url)
