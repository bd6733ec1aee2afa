"""A production-shaped stack on private PostgreSQL and Redis servers that the fault tests break."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from groklab.store.migrate import upgrade
from tests.local_servers import PrivatePostgres, PrivateRedis
from tests.services import Stack, service_env

FAULT_SUMMARY = {"faults injected": 0, "runs finished": 0, "points lost": 0, "duplicates": 0}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FAULT_SUMMARY["faults injected"]:
        terminalreporter.write_line("fault tests: " + ", ".join(f"{name}: {count}" for name, count in FAULT_SUMMARY.items()))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    # Servers of their own, apart from the session's, since these tests stop and wipe them.
    postgres = PrivatePostgres()
    postgres.init()
    postgres.start()
    upgrade(postgres.url)
    broker = PrivateRedis()
    broker.start()
    yield postgres, broker
    broker.kill()
    postgres.remove()


@pytest.fixture(scope="module")
def fault_stack(servers: tuple[PrivatePostgres, PrivateRedis], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    postgres, broker = servers
    data_dir: Path = tmp_path_factory.mktemp("fault-stack")
    env = service_env(
        postgres.url,
        broker.url,
        data_dir,
        GROKLAB_LEASE_SECONDS="6",
        GROKLAB_RECONCILE_SECONDS="1",
        GROKLAB_REQUEUE_GRACE_SECONDS="2",
        # Runs train alone (the default, said here because the comparison depends on it): a
        # resumed run is compared bit for bit with one trained undisturbed, and a batched
        # ensemble agrees with lone runs only up to float32 rounding.
        GROKLAB_ENSEMBLE_SIZE="1",
    )
    stack = Stack(env=env, log_dir=data_dir)
    for name in ("w1", "w2"):  # hosts that share nothing but the servers: a data dir each
        stack.start_worker(name, env={"GROKLAB_DATA_DIR": str(data_dir / name)})
    stack.start_api()
    yield stack
    stack.stop()
