"""Checkpoints are written by a background thread: in order, after their points are durable, all of
them before training returns, while training goes on; a failed write fails its member alone."""

from __future__ import annotations

import threading
import time

import pytest

from engine.checkpoint import Checkpoint, CheckpointFolder
from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec
from engine.train import PENDING_CHECKPOINTS, train_ensemble, train_run

from . import single_cpu_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _spec(**changes) -> RunSpec:
    base = dict(task=TaskSpec(p=23, train_size=100), phases=[PhaseSpec(steps=20)], eval_every=5, device="cpu")
    return RunSpec(**{**base, **changes})


class _DurableSink(MemorySink):
    """A sink whose flush makes durable what it has logged so far, flushed off the training thread."""

    flush_from_any_thread = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.logged_through = -1
        self.durable_through = -1
        self.flush_threads: set[str] = set()

    def log(self, step, metrics) -> None:
        super().log(step, metrics)
        with self._lock:
            self.logged_through = max(self.logged_through, step)

    def flush(self) -> None:
        with self._lock:
            self.durable_through = self.logged_through
        self.flush_threads.add(threading.current_thread().name)


class _SlowStorage:
    """An external store that takes `seconds` a save, recording the step of each and whether the
    points up to it were durable by then."""

    def __init__(self, sink: _DurableSink, seconds: float = 0.0) -> None:
        self.sink, self.seconds = sink, seconds
        self.steps: list[int] = []
        self.points_durable: list[bool] = []
        self.latest: Checkpoint | None = None

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        # Logged before the checkpoint: every point of an earlier step, and the evaluation at its step.
        logged = ckpt.step if self.sink.series and ckpt.step in self.sink.series["test_acc"] else ckpt.step - 1
        self.points_durable.append(self.sink.durable_through >= logged)
        time.sleep(self.seconds)
        self.steps.append(ckpt.step)
        self.latest = ckpt

    def load(self) -> Checkpoint | None:
        return self.latest


def test_checkpoints_land_in_step_order_after_their_points_and_all_before_train_returns():
    sink = _DurableSink()
    storage = _SlowStorage(sink, seconds=0.01)
    result = train_run(_spec(checkpoint_every=1, train_loss_every=1), sink, checkpoint=storage)
    assert result.final_step == 20 and result.error is None
    assert storage.steps == list(range(1, 21))  # drained: the last one too, before the result
    assert all(storage.points_durable)
    assert sink.flush_threads == {"checkpoint-writer"}  # the flush left the training thread too
    # A resume from the last checkpoint sees the state after 20 steps, in tensors of their own
    # size (views into the host copy would each carry the ensemble's whole buffer).
    assert storage.latest is not None and storage.latest.step == 20
    for tensor in storage.latest.model.values():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


class _GatedStorage(_SlowStorage):
    """A store whose saves wait until the test opens the gate (at most 10 s, so a bug cannot hang)."""

    def __init__(self, sink: _DurableSink) -> None:
        super().__init__(sink)
        self.gate = threading.Event()

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        self.gate.wait(timeout=10)
        super().save(ckpt, keep)


def test_training_goes_on_during_a_save_until_the_writer_queue_is_full():
    sink = _DurableSink()
    storage = _GatedStorage(sink)
    results = []
    trainer = threading.Thread(target=lambda: results.append(train_run(_spec(checkpoint_every=1), sink, checkpoint=storage)))
    trainer.start()
    try:
        # The first checkpoint's save is held; training takes PENDING_CHECKPOINTS more steps, each
        # queueing a checkpoint, and one more whose checkpoint finds the queue full.
        stalled_at = 2 + PENDING_CHECKPOINTS
        deadline = time.monotonic() + 5
        while sink.last_step < stalled_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.last_step == stalled_at and storage.steps == []
        time.sleep(0.2)
        assert sink.last_step == stalled_at and trainer.is_alive()  # waiting on the full queue
    finally:
        storage.gate.set()
        trainer.join(timeout=10)
    assert results[0].final_step == 20 and storage.steps == list(range(1, 21))


class _FailingStorage(CheckpointFolder):
    """A folder whose saves fail from step `fail_from` on, counting the attempts."""

    def __init__(self, directory, fail_from: int) -> None:
        super().__init__(directory)
        self.fail_from = fail_from
        self.attempts: list[int] = []

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        self.attempts.append(ckpt.step)
        if ckpt.step >= self.fail_from:
            raise OSError("store down")
        super().save(ckpt, keep)


def test_a_failed_background_write_fails_its_member_alone_even_the_final_one(tmp_path):
    spec = _spec(phases=[PhaseSpec(steps=40)], checkpoint_every=10)
    storages = [_FailingStorage(tmp_path / str(k), fail_from) for k, fail_from in enumerate([99, 20, 40])]
    results = train_ensemble([spec] * 3, [MemorySink() for _ in storages], checkpoints=storages)
    assert results[0].error is None and results[0].final_step == 40
    assert storages[0].load().step == 40
    assert results[1].error == "OSError: store down" and 20 <= results[1].final_step < 40
    assert storages[1].attempts == [10, 20]  # nothing written after the lost checkpoint
    assert storages[1].load().step == 10
    # Trained to the end, but its final checkpoint is missing: a failure, not a success.
    assert results[2].error == "OSError: store down" and results[2].final_step == 40
    with pytest.raises(OSError, match="store down"):  # a lone run raises it, as before
        train_run(spec, MemorySink(), checkpoint=_FailingStorage(tmp_path / "alone", 20))
