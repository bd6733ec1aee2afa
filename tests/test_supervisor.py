"""`groklab up`'s supervisor with real child processes: a dead worker is replaced, one that keeps
dying at start stops everything, the api is never restarted behind the user's back, and each
worker sees only its own GPU (GROKLAB_GPUS)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from groklab import cli
from groklab.gpus import GpuConfigError, assign, default_worker_plan, visible_gpu_count, worker_envs, worker_gpus
from groklab.settings import Settings
from groklab.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _supervisor(worker: list[str], deaths: list[tuple[str, int]], **options: float) -> Supervisor:
    return Supervisor(SLEEPER, {"w0@test": worker}, os.environ, lambda name, code: deaths.append((name, code)), **options)


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


def _gpu_reporter(path: Path) -> list[str]:
    """A worker stand-in that appends the CUDA_VISIBLE_DEVICES it was started with to a file of its
    own, then waits to be stopped."""
    script = (
        "import os, sys, time; "
        "open(sys.argv[1], 'a').write(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>') + '\\n'); "
        "time.sleep(60)"
    )
    return [sys.executable, "-c", script, str(path)]


def _wait_for_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"{path} has fewer than {count} lines")


def test_each_worker_sees_only_its_own_gpu_round_robin_and_keeps_it_when_restarted(tmp_path: Path) -> None:
    names = ["worker0@test", "worker1@test", "worker2@test"]
    gpus = worker_gpus("0,1", 3, os.environ)  # more workers than GPUs: round-robin
    assert gpus == ["0", "1", "0"]
    commands = {name: _gpu_reporter(tmp_path / name) for name in names}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}  # what `groklab up` itself sees: every GPU
    supervisor = Supervisor(
        SLEEPER, commands, env, lambda name, code: None, worker_envs=worker_envs(names, gpus), backoff_seconds=0.05
    )
    supervisor.start()
    try:
        assert [_wait_for_lines(tmp_path / name, 1) for name in names] == [["0"], ["1"], ["0"]]
        first = supervisor.workers[1].process
        assert first is not None
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and supervisor.workers[1].process in (None, first):
            assert supervisor.check() is None
            time.sleep(0.02)
        assert _wait_for_lines(tmp_path / names[1], 2) == ["1", "1"]  # the restarted worker: the same GPU
    finally:
        supervisor.stop()


def test_unpinned_workers_see_what_groklab_up_sees(tmp_path: Path) -> None:
    name = "worker0@test"
    assert worker_gpus(None, 2, os.environ) is None and worker_envs([name], None) == {}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3"}
    supervisor = Supervisor(SLEEPER, {name: _gpu_reporter(tmp_path / name)}, env, lambda name, code: None)
    supervisor.start()
    try:
        assert _wait_for_lines(tmp_path / name, 1) == ["3"]
    finally:
        supervisor.stop()


def test_one_worker_per_listed_gpu_by_default_and_never_fewer() -> None:
    assert [Settings(gpus=text).gpus for text in (" 0, 2 ", "ALL", "", "GPU-8f2a-11")] == ["0,2", "all", None, "GPU-8f2a-11"]
    assert worker_gpus(Settings(gpus="0, 2").gpus, None, {}) == ["0", "2"]
    assert assign(["0", "1", "2", "3"], None) == ["0", "1", "2", "3"]
    with pytest.raises(GpuConfigError, match=r"--workers 2 \(GROKLAB_WORKERS\) is fewer than the 4 GPUs of --gpus"):
        assign(["0", "1", "2", "3"], 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0,x"], "GROKLAB_GPUS: Value error, not a GPU id: x"),
        (["--gpus", "1,1"], "GROKLAB_GPUS: Value error, a GPU is listed twice"),
        (["--gpus", "0,1,2", "--workers", "2"], "--workers 2 (GROKLAB_WORKERS) is fewer than the 3 GPUs"),
    ],
)
def test_groklab_up_refuses_a_gpu_plan_it_cannot_keep_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    data_dir = tmp_path / "data"
    assert cli.main(["up", "--data-dir", str(data_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not data_dir.exists()


def test_groklab_up_with_all_gpus_pins_every_visible_one_and_with_none_says_so_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = torch.cuda.device_count()
    if count:  # a GPU host: a worker for each GPU this process sees
        assert len(worker_gpus("all", None, os.environ) or []) == count
        return
    data_dir = tmp_path / "data"
    assert cli.main(["up", "--gpus", "all", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "GROKLAB_GPUS=all (--gpus all) but this process sees no CUDA GPU" in err
    assert "unset GROKLAB_GPUS to train on the CPU" in err
    assert not data_dir.exists()


def test_groklab_up_fits_its_workers_to_the_machine_unless_told() -> None:
    assert default_worker_plan("0,1", None, "auto") == ("0,1", None)
    assert default_worker_plan(None, 3, "auto") == (None, 3)
    cores = len(os.sched_getaffinity(0))
    on_cpu = (None, max(1, min(16, cores // 2)))
    assert default_worker_plan(None, None, "cpu") == on_cpu
    assert default_worker_plan(None, None, "auto") == (("all", None) if visible_gpu_count() else on_cpu)
