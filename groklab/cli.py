"""The `groklab` command: `up` runs the embedded server (api + workers), `migrate` the schema."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from groklab.settings import Settings
from groklab.store.migrate import upgrade

STOP_TIMEOUT_SECONDS = 20


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="groklab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="migrate, then run the api and worker processes until Ctrl-C")
    up.add_argument("--host", default=settings.host, help="bind address (GROKLAB_HOST)")
    up.add_argument("--port", type=int, default=settings.port, help="api port (GROKLAB_PORT)")
    up.add_argument(
        "--data-dir", type=Path, default=settings.data_dir, help="SQLite, broker, checkpoints (GROKLAB_DATA_DIR)"
    )
    up.add_argument("--workers", type=int, default=settings.workers, help="worker processes (GROKLAB_WORKERS)")

    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")

    args = parser.parse_args(argv)
    if args.command == "migrate":
        upgrade(settings.resolved_database_url)
        return 0
    return run_up(args.host, args.port, args.data_dir.resolve(), args.workers)


def run_up(host: str, port: int, data_dir: Path, workers: int) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GROKLAB_DATA_DIR": str(data_dir), "GROKLAB_HOST": host, "GROKLAB_PORT": str(port)}
    env.setdefault("GROKLAB_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    settings = Settings(data_dir=data_dir)
    upgrade(settings.resolved_database_url)

    processes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                "--pool", "solo", "--loglevel", "INFO", "-n", f"worker{i}@%h",
            ],
            env=env,
        )
        for i in range(workers)
    ]
    processes.append(
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)],
            env=env,
        )
    )
    print(
        f"groklab is up: http://{host}:{port} (docs at /docs), {workers} worker(s), "
        f"database {settings.resolved_database_url}, broker {settings.resolved_broker_url} in "
        f"{settings.broker_folder}. Ctrl-C stops it.",
        flush=True,
    )

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for process in processes:
            if process.poll() is not None:
                print(f"groklab: a child process exited with {process.returncode}; stopping", file=sys.stderr)
                exit_code = 1
                stopping = True
        time.sleep(0.2)
    _stop(processes)
    print("groklab stopped.", flush=True)
    return exit_code


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
