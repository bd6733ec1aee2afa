"""`groklab up`'s supervisor with real child processes: a dead worker is replaced, one that keeps
dying at start stops everything, and the api is never restarted behind the user's back."""

from __future__ import annotations

import os
import signal
import sys
import time

from groklab.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _supervisor(worker: list[str], deaths: list[tuple[str, int]], **options: float) -> Supervisor:
    return Supervisor(
        SLEEPER, {"w0@test": worker}, os.environ, lambda name, code: deaths.append((name, code)), **options
    )


def test_a_killed_worker_is_handed_back_and_restarted_while_the_api_keeps_running() -> None:
    deaths: list[tuple[str, int]] = []
    supervisor = _supervisor(SLEEPER, deaths, backoff_seconds=0.1)
    supervisor.start()
    try:
        first = supervisor.workers[0].process
        assert first is not None
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (supervisor.workers[0].process in (None, first)):
            assert supervisor.check() is None
            time.sleep(0.02)
        second = supervisor.workers[0].process
        assert second is not None and second is not first and second.poll() is None
        assert deaths == [("w0@test", -signal.SIGKILL)]
        assert supervisor.api is not None and supervisor.api.poll() is None
    finally:
        supervisor.stop()
    assert second.poll() is not None and supervisor.api.poll() is not None


def test_a_worker_that_keeps_dying_at_start_stops_everything_with_a_clear_message(capsys) -> None:  # type: ignore[no-untyped-def]
    deaths: list[tuple[str, int]] = []
    supervisor = _supervisor(CRASHER, deaths, backoff_seconds=0.05, max_early_deaths=3, poll_seconds=0.02)
    supervisor.start()
    started = time.monotonic()
    exit_code = supervisor.run(lambda: time.monotonic() - started > 30)
    assert exit_code == 1
    assert deaths == [("w0@test", 3)] * 3
    assert "worker w0@test died 3 times within 60 s of starting (last: exit code 3); giving up" in capsys.readouterr().err
    assert supervisor.api is not None and supervisor.api.poll() is not None
    # Backoff doubles: 0.05 s and 0.1 s between the three starts.
    assert time.monotonic() - started >= 0.15


def test_the_api_exiting_stops_the_workers() -> None:
    supervisor = _supervisor(SLEEPER, [], poll_seconds=0.02)
    supervisor.start()
    assert supervisor.api is not None
    supervisor.api.send_signal(signal.SIGKILL)
    assert supervisor.run(lambda: False) == 1
    assert all(w.process is None or w.process.poll() is not None for w in supervisor.workers)
