"""`groklab up`'s processes: the api keeps serving while a dead worker is replaced, with backoff.

A worker killed mid-run (the OOM killer's SIGKILL) gets its runs handed back at once through
`on_worker_death`, then a fresh process under the same name. Only a worker that keeps dying
soon after it starts (a bad setting, a broken install) makes `groklab up` give up, since
restarting it again would only hide the error. The api dying still stops everything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

STOP_TIMEOUT_SECONDS = 20


@dataclass
class _Worker:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Set on top of the supervisor's env for this worker alone (its GPU), at every start."""
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    early_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts the api and the workers, restarts dead workers, stops them all on request.

    A death within `early_death_seconds` of its start counts towards `max_early_deaths`, and
    each one doubles the wait before the next start (from `backoff_seconds`); a worker that
    lived longer died of its run, not of its start, and is restarted after `backoff_seconds`.
    `worker_envs` sets variables for one worker alone on top of `env` (its GPU, groklab/gpus.py),
    for its first start and every restart.
    """

    def __init__(
        self,
        api_command: list[str],
        worker_commands: Mapping[str, list[str]],
        env: Mapping[str, str],
        on_worker_death: Callable[[str, int], None],
        *,
        worker_envs: Mapping[str, Mapping[str, str]] | None = None,
        backoff_seconds: float = 1.0,
        early_death_seconds: float = 60.0,
        max_early_deaths: int = 5,
        poll_seconds: float = 0.2,
    ) -> None:
        self.api_command = api_command
        worker_envs = worker_envs or {}
        self.workers = [_Worker(name, command, dict(worker_envs.get(name, {}))) for name, command in worker_commands.items()]
        self.env = dict(env)
        self.on_worker_death = on_worker_death
        self.backoff_seconds = backoff_seconds
        self.early_death_seconds = early_death_seconds
        self.max_early_deaths = max_early_deaths
        self.poll_seconds = poll_seconds
        self.api: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for worker in self.workers:
            self._start_worker(worker)
        self.api = subprocess.Popen(self.api_command, env=self.env)

    def run(self, stop_requested: Callable[[], bool]) -> int:
        """Supervise until stop_requested() or a fatal failure; stops every child; the exit code."""
        exit_code = 0
        while not stop_requested():
            failure = self.check()
            if failure is not None:
                print(f"groklab: {failure}; stopping", file=sys.stderr, flush=True)
                exit_code = 1
                break
            time.sleep(self.poll_seconds)
        self.stop()
        return exit_code

    def check(self) -> str | None:
        """One look at every child: restart what is due; why to give up, or None."""
        assert self.api is not None
        if self.api.poll() is not None:
            return f"the api exited with {_describe(self.api.returncode)}"
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._start_worker(worker)
                continue
            code = worker.process.poll()
            if code is None:
                continue
            worker.process = None
            failure = self._worker_died(worker, code, now)
            if failure is not None:
                return failure
        return None

    def _worker_died(self, worker: _Worker, code: int, now: float) -> str | None:
        lived = now - worker.started_at
        worker.early_deaths = worker.early_deaths + 1 if lived < self.early_death_seconds else 1
        try:
            self.on_worker_death(worker.name, code)
        except Exception as exc:  # the lease still expires, and the reconciler re-queues
            print(f"groklab: could not hand back the runs of {worker.name}: {exc}", file=sys.stderr, flush=True)
        if lived < self.early_death_seconds and worker.early_deaths >= self.max_early_deaths:
            return (
                f"worker {worker.name} died {worker.early_deaths} times within "
                f"{self.early_death_seconds:g} s of starting (last: {_describe(code)}); giving up, "
                "see its output above"
            )
        delay = self.backoff_seconds * 2 ** (worker.early_deaths - 1)
        worker.restart_at = now + delay
        print(
            f"groklab: worker {worker.name} exited with {_describe(code)} after {lived:.0f} s; restarting it in {delay:g} s",
            file=sys.stderr,
            flush=True,
        )
        return None

    def _start_worker(self, worker: _Worker) -> None:
        worker.process = subprocess.Popen(worker.command, env={**self.env, **worker.env})
        worker.started_at = time.monotonic()
        worker.restart_at = None

    def stop(self) -> None:
        """SIGTERM to every child (a worker checkpoints and re-queues its runs), SIGKILL after a while."""
        children = [w.process for w in self.workers if w.process is not None]
        if self.api is not None:
            children.append(self.api)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _describe(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
        return f"{name}{' (the OOM killer?)' if code == -signal.SIGKILL else ''}"
    return f"exit code {code}"
