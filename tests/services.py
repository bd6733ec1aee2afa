"""Real groklab processes for tests: a PostgreSQL database, an api and Celery workers over HTTP."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from groklab.lifecycle import FINISHED_STATUSES
from tests.local_servers import free_port
from groklab.store.database import create_database, drop_database
from groklab.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
FINISHED = set(FINISHED_STATUSES)


@dataclass(frozen=True)
class TestServers:
    """The PostgreSQL (an admin libpq URL) and Redis the test run uses; see tests/conftest.py."""

    pg_admin_url: str
    redis_url: str


_servers: TestServers | None = None


def use_servers(servers: TestServers) -> None:
    global _servers
    _servers = servers


def _current_servers() -> TestServers:
    if _servers is None:
        raise RuntimeError("the test servers are set up by the session fixture in tests/conftest.py")
    return _servers


def pg_admin_url() -> str:
    return _current_servers().pg_admin_url


def redis_url() -> str:
    return _current_servers().redis_url


def create_pg_database() -> tuple[str, str]:
    """A fresh, empty database on the test run's PostgreSQL; returns (its name, its SQLAlchemy URL)."""
    return create_database(pg_admin_url())


def drop_pg_database(name: str) -> None:
    drop_database(pg_admin_url(), name)


@contextmanager
def migrated_pg_database() -> Iterator[str]:
    """A database of its own for a stack with its own queue, migrated; dropped afterwards.

    A stack on another stack's database would steal its runs: an api's reconciler re-sends any
    queued run of its database that has no message waiting in the api's own queue.
    """
    name, url = create_pg_database()
    upgrade(url)
    try:
        yield url
    finally:
        drop_pg_database(name)


@contextmanager
def pg_redis_client(data_dir: Path, workers: list[str]) -> Iterator[httpx.Client]:
    """An api and these workers on a PostgreSQL database of their own and Redis, as on a cluster,
    and an HTTP client of the api; stopped afterwards."""
    with migrated_pg_database() as database_url:
        stack = Stack(env=service_env(database_url, redis_url(), data_dir), log_dir=data_dir)
        for name in workers:
            stack.start_worker(name)
        stack.start_api()
        try:
            with httpx.Client(base_url=stack.base_url, timeout=60) as client:
                yield client
        finally:
            stack.stop()


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@dataclass
class Stack:
    """An api process and worker processes sharing one database and broker."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    worker_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    api: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{log_name}.log").open("ab")
        process = subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        self.api = self._spawn(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)],
            "api",
        )
        wait_http(f"{self.base_url}/healthz")

    def restart_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGTERM)
        self.api.wait(timeout=30)
        self.processes.remove(self.api)
        self.start_api()

    def start_worker(self, name: str = "w1", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A worker process; `env` overrides the stack's environment for it alone (its own data
        dir), and a worker restarted under the same name gets the same overrides."""
        env = self.worker_envs.setdefault(name, env or {})
        process = self._spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "-n",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            f"worker-{name}",
            env,
        )
        self.workers[name] = process
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT if process in self.workers.values() else signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.log_dir.glob("*.log"))


def service_env(database_url: str, broker_url: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(
        GROKLAB_DATABASE_URL=database_url,
        GROKLAB_DATA_DIR=str(data_dir),
        GROKLAB_QUEUE_NAME=f"groklab-test-{uuid.uuid4().hex[:8]}",
        GROKLAB_TORCH_THREADS="1",
        GROKLAB_METRIC_FLUSH_SECONDS="0.2",
        GROKLAB_CANCEL_POLL_SECONDS="0.2",
        PYTHONUNBUFFERED="1",
    )
    if broker_url:
        env["GROKLAB_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A run that memorises a 13-token table within a couple of seconds on one core."""
    spec: dict[str, Any] = {
        "task": {"op": "add", "p": 13, "train_fraction": 0.5},
        "model": {"kind": "transformer", "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64},
        "optimizer": {"lr": 0.003, "weight_decay": 1.0},
        "phases": [{"steps": 300}],
        "eval_every": 10,
    }
    spec.update(overrides)
    return spec


def wait_for_runs(
    client: httpx.Client, run_ids: Iterable[int], statuses: set[str] = FINISHED, timeout: float = 120.0
) -> dict[int, dict[str, Any]]:
    pending = set(run_ids)
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for run_id in list(pending):
            run = client.get(f"/v1/runs/{run_id}").json()
            if run["status"] in statuses:
                done[run_id] = run
                pending.discard(run_id)
        time.sleep(0.2)
    if pending:
        raise TimeoutError(f"runs {sorted(pending)} did not reach {statuses} within {timeout}s")
    return done


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def create_key(database_url: str, owner: str, scopes: str = "read,write") -> str:
    """A key made the way an operator makes one: the `groklab keys create` command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env["GROKLAB_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "groklab.cli", "keys", "create", "--owner", owner, "--scopes", scopes],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def base_install_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process that may import only groklab's base dependencies (what `bin/groklab`
    installs), although this venv has the test extra: see tests/base_install.py."""
    path = os.pathsep.join(filter(None, [str(_base_install_site()), str(ROOT), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "BASE_INSTALL_BLOCKED_MODULES": ",".join(_modules_outside_the_base_install())}


@functools.cache
def _base_install_site() -> Path:
    """A folder holding the `sitecustomize` that makes a process load tests/base_install.py."""
    folder = Path(tempfile.mkdtemp(prefix="groklab-base-install-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "sitecustomize.py").write_text("from tests.base_install import install\n\ninstall()\n")
    return folder


@functools.cache
def _modules_outside_the_base_install() -> list[str]:
    """Top-level modules of the installed distributions that groklab's base dependencies (with
    their extras, transitively) do not bring."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted: set[tuple[str, str]] = set()
    pending = [("groklab", "")]
    while pending:
        name, extra = pending.pop()
        if (name, extra) in wanted:
            continue
        wanted.add((name, extra))
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                dist = canonicalize_name(requirement.name)
                pending += [(dist, "")] + [(dist, e) for e in requirement.extras]
    base = {name for name, _ in wanted}
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in base for d in dists)
    )
