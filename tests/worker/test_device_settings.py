"""GROKLAB_TF32: a worker setting applied once when the worker process starts, which training leaves alone."""

from __future__ import annotations

from collections.abc import Iterator

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
def restored_flags() -> Iterator[None]:
    """The flags are process-wide: put back what the test process had, and read settings afresh."""
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
