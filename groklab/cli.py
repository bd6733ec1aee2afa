"""The `groklab` command: `up` runs the embedded server (api + workers, a dead worker replaced),
`migrate` the schema, `keys` creates, lists and revokes API keys; submit, status, watch, metrics,
cancel and delete talk to an api."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from groklab.client.commands import COMMANDS as CLIENT_COMMANDS
from groklab.client.commands import add_client_commands, run_client_command
from groklab.gpus import GpuConfigError, default_worker_plan, worker_envs, worker_gpus
from groklab.settings import InsecureConfig, Settings

if TYPE_CHECKING:
    from groklab.supervisor import Supervisor

# The server side (SQLAlchemy, Celery, the store) is imported by the commands that run it, so
# that the client commands start in a fraction of a second and fail fast when the api is down.


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="groklab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="migrate, then run the api and worker processes until Ctrl-C")
    up.add_argument("--host", default=settings.host, help="bind address (GROKLAB_HOST)")
    up.add_argument("--port", type=int, default=settings.port, help="api port (GROKLAB_PORT)")
    up.add_argument("--data-dir", type=Path, default=settings.data_dir, help="SQLite, broker, checkpoints (GROKLAB_DATA_DIR)")
    up.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help="worker processes (GROKLAB_WORKERS; default one per GPU, or on a host without one, one per two cores)",
    )
    up.add_argument(
        "--gpus",
        default=settings.gpus,
        help="pin one worker to each GPU: 0,1,2,3 or all (GROKLAB_GPUS; default all when a GPU is visible and --workers is not given)",
    )

    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")

    check = commands.add_parser(
        "check", help="exit 0 when the database and the broker answer (and the api, with --url): a healthcheck"
    )
    check.add_argument("--url", help="also require this api's /healthz to answer (e.g. http://127.0.0.1:8000)")

    keys = commands.add_parser("keys", help="API keys of the database in GROKLAB_DATABASE_URL").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--owner", required=True, help="whose experiments and runs the key reaches")
    create.add_argument("--scopes", default="read,write", help="read, write or read,write (default)")
    create.add_argument("--name", help="a label to recognise the key by")
    keys.add_parser("list", help="every key's id, owner, scopes and state (never the secret)")
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", type=int, metavar="ID")

    add_client_commands(commands)

    args = parser.parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    if args.command == "migrate":
        from groklab.store.migrate import upgrade

        upgrade(settings.resolved_database_url)
        return 0
    if args.command == "keys":
        return run_keys(settings, args)
    if args.command == "check":
        return run_check(settings, args.url)
    return run_up(args.host, args.port, args.data_dir.resolve(), args.workers, args.gpus)


def run_check(settings: Settings, api_url: str | None) -> int:
    """The container healthcheck of the api and the workers: what this process needs, reachable now."""
    import httpx

    from groklab.dispatch import broker_reachable
    from groklab.store.database import database_reachable
    from worker.celery_config import make_celery

    checks = {
        "database": database_reachable(settings.resolved_database_url),
        "broker": broker_reachable(make_celery(settings)),
    }
    if api_url is not None:
        try:
            checks["api"] = httpx.get(f"{api_url.rstrip('/')}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            checks["api"] = False
    down = [name for name, ok in checks.items() if not ok]
    if down:
        print(f"groklab check: cannot reach the {' and the '.join(down)}", file=sys.stderr)
        return 1
    print("groklab check: " + ", ".join(checks) + " reachable")
    return 0


def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from groklab.errors import GroklabError
    from groklab.store import keys as key_store
    from groklab.store.database import session_scope

    try:
        with session_scope(settings.resolved_database_url) as session:
            if args.keys_command == "create":
                key, secret = key_store.create_key(session, owner=args.owner, scopes=args.scopes, name=args.name)
                print(secret)
                print(
                    f"key {key.id} for owner {key.owner!r} with scopes {key.scopes}; store it now, it cannot be shown again",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                print("id\towner\tname\tprefix\tscopes\tcreated\trevoked")
                for key in key_store.list_keys(session):
                    revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
                    print(
                        f"{key.id}\t{key.owner}\t{key.name or '-'}\t{key.prefix}...\t{key.scopes}\t"
                        f"{key.created_at.isoformat(timespec='seconds')}\t{revoked}"
                    )
            else:
                key = key_store.revoke_key(session, args.key_id)
                print(f"key {key.id} ({key.prefix}...) of owner {key.owner!r} is revoked")
    except GroklabError as exc:
        print(f"groklab keys: {exc.detail}", file=sys.stderr)
        return 2
    except (OperationalError, ProgrammingError) as exc:
        print(
            f"groklab keys: cannot use the database ({exc.orig}); run `groklab migrate` first?",
            file=sys.stderr,
        )
        return 1
    return 0


def run_up(host: str, port: int, data_dir: Path, workers: int | None, gpus: str | None = None) -> int:
    from groklab.store.migrate import upgrade

    try:
        settings = Settings(data_dir=data_dir, host=host, gpus=gpus, workers=workers)
        required = settings.auth_required()
        gpus, workers = default_worker_plan(settings.gpus, settings.workers, settings.device)
        gpu_of_worker = worker_gpus(gpus, workers, os.environ)
    except InsecureConfig as exc:
        print(f"groklab: refusing to start: {exc}", file=sys.stderr)
        return 2
    except (ValidationError, GpuConfigError) as exc:
        print(f"groklab: refusing to start: {_reason(exc)}", file=sys.stderr)
        return 2
    count = len(gpu_of_worker) if gpu_of_worker is not None else workers or 1
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GROKLAB_DATA_DIR": str(data_dir), "GROKLAB_HOST": host, "GROKLAB_PORT": str(port)}
    env.setdefault("GROKLAB_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    upgrade(settings.resolved_database_url)
    supervisor = _supervisor(settings, host, port, env, count, gpu_of_worker)
    supervisor.start()
    _print_up(settings, host, port, count, gpu_of_worker, auth_required=required)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = supervisor.run(lambda: stopping)
    print("groklab stopped.", flush=True)
    return exit_code


def _supervisor(
    settings: Settings, host: str, port: int, env: dict[str, str], count: int, gpu_of_worker: list[str] | None
) -> Supervisor:
    """`groklab up`'s processes: the api and `count` workers, a dead worker's runs handed back."""
    from groklab.reconciler import hand_back_worker_runs
    from groklab.supervisor import Supervisor
    from worker.celery_config import make_celery

    host_name = socket.gethostname()
    names = [f"worker{i}@{host_name}" for i in range(count)]
    workers_by_name = {
        name: [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--pool", "solo", "--loglevel", "INFO", "-n", name,
        ]
        for name in names
    }  # fmt: skip
    celery = make_celery(settings)

    def hand_back(worker: str, code: int) -> None:
        run_ids = hand_back_worker_runs(settings, celery, worker, reason=f"worker {worker} died (exit {code}); re-queued")
        if run_ids:
            print(f"groklab: handed back runs {run_ids} of worker {worker}", file=sys.stderr, flush=True)

    return Supervisor(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)],
        workers_by_name,
        env,
        hand_back,
        worker_envs=worker_envs(names, gpu_of_worker),
    )


def _print_up(
    settings: Settings, host: str, port: int, count: int, gpu_of_worker: list[str] | None, *, auth_required: bool
) -> None:
    on_gpus = "" if gpu_of_worker is None else f" on GPUs {', '.join(gpu_of_worker)}"
    print(
        f"groklab is up: http://{host}:{port} (docs at /docs), {count} worker(s){on_gpus}, "
        f"database {settings.resolved_database_url}, broker {settings.resolved_broker_url} in "
        f"{settings.broker_folder}. Ctrl-C stops it.",
        flush=True,
    )
    if auth_required:
        print(
            "auth: required; send `Authorization: Bearer <key>` (create one with `groklab keys create --owner NAME`).",
            flush=True,
        )
    else:
        print(
            f"auth: off, because the api is bound to loopback {host}: every request acts as owner "
            "'local'. Bind another address (--host) and API keys become required.",
            flush=True,
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"GROKLAB_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
