"""GROKLAB_TF32: a worker setting applied once when the worker process starts, which training leaves alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from celery import signals

from engine.device import configure_tf32
from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec
from engine.train import train_run
from groklab.settings import Settings, get_settings
from worker import celery_app  # noqa: F401  (connects the startup hook, as `celery -A worker.celery_app` does)

DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture(autouse=True)
def restored_flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The flags are process-wide: put back what the test process had, and read settings afresh.
    The worker hooks run in this process: they leave its CPU priority alone (GROKLAB_WORKER_NICE=0)."""
    monkeypatch.setenv("GROKLAB_WORKER_NICE", "0")
    before = _tf32()
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_is_on_unless_the_setting_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROKLAB_TF32", raising=False)
    assert Settings().tf32 is True
    monkeypatch.setenv("GROKLAB_TF32", "false")
    assert Settings().tf32 is False


@pytest.mark.parametrize("signal", [signals.worker_init, signals.worker_process_init], ids=["solo", "prefork-child"])
@pytest.mark.parametrize("enabled", [False, True])
def test_a_starting_worker_applies_the_tf32_setting(
    monkeypatch: pytest.MonkeyPatch, signal: signals.Signal, enabled: bool
) -> None:
    monkeypatch.setenv("GROKLAB_TF32", str(enabled).lower())
    configure_tf32(not enabled)  # the opposite, so only the hook can make the assertion hold
    signal.send(sender=None)
    assert _tf32() == (enabled, enabled)


@pytest.mark.parametrize("device", DEVICES)
def test_training_leaves_tf32_as_the_worker_set_it(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """On a GPU host the cuda case is the one that failed before: resolve_device turned TF32 on."""
    monkeypatch.setenv("GROKLAB_TF32", "false")
    signals.worker_init.send(sender=None)
    spec = RunSpec(task=TaskSpec(p=7, train_fraction=0.5), phases=[PhaseSpec(steps=3)], device=device)
    result = train_run(spec, MemorySink())
    assert result.error is None and result.final_step == 3
    assert _tf32() == (False, False)


_NICE_PROBE = """
import os, threading
from pathlib import Path
from celery import signals
from worker import celery_app  # noqa: F401
started = threading.Event()
threading.Thread(target=lambda: (started.set(), threading.Event().wait(30)), daemon=True).start()
started.wait()
signals.worker_init.send(sender=None)
nices = [int(Path(f"/proc/self/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[16]) for t in os.listdir("/proc/self/task")]
print(os.getpriority(os.PRIO_PROCESS, 0), min(nices), len(nices))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
@pytest.mark.parametrize("nice", [0, 7])
def test_a_starting_worker_lowers_the_cpu_priority_of_all_its_threads(nice: int) -> None:
    # A worker training on the api's host must not starve the api: every thread of the worker
    # (those that exist at start too) runs at the configured nice value. In a child process: a
    # nice value, once raised, cannot be lowered back without privileges.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    env = {**os.environ, "GROKLAB_WORKER_NICE": str(nice)}
    probe = subprocess.run([sys.executable, "-c", _NICE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    main_thread, least, threads = map(int, probe.stdout.split())
    assert threads >= 2
    assert main_thread == least == max(base, nice)
