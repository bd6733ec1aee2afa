"""A run stopped and resumed from its checkpoint logs the same metrics as one trained straight."""

import pytest
from pydantic import ValidationError
import torch

from engine.checkpoint import CHECKPOINT_NAME
from engine.result import EngineError
from engine.sink import MemorySink
from engine.spec import OptimizerSpec, PhaseSpec, RunSpec, TaskSpec
from engine.train import train_run

from . import DEVICES, single_cpu_thread

TASK = TaskSpec(p=23, train_fraction=0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _spec(**changes) -> RunSpec:
    base = dict(task=TASK, phases=[PhaseSpec(steps=60)], eval_every=10, train_loss_every=1, device="cpu")
    return RunSpec(**{**base, **changes})


def _stop_at(sink: MemorySink, step: int):
    return lambda: sink.last_step >= step


def _assert_same_series(straight: MemorySink, pieces: list[MemorySink]) -> None:
    merged: dict[str, dict[int, float]] = {}
    for piece in pieces:  # a later piece re-logs the resumed step: the latest value wins
        for name, points in piece.series.items():
            merged.setdefault(name, {}).update(points)
    assert set(merged) == set(straight.series)
    for name, points in straight.series.items():
        for step, value in points.items():
            assert merged[name][step] == pytest.approx(value, abs=1e-6), (name, step)


@pytest.mark.parametrize(
    "changes, stop",
    [
        ({}, 30),
        ({"optimizer": OptimizerSpec(batch_size=64)}, 25),
        ({"phases": [PhaseSpec(steps=30), PhaseSpec(steps=30, train_set="subset", subset_size=80)]}, 20),
        ({"phases": [PhaseSpec(steps=30), PhaseSpec(steps=30, train_set="subset", subset_size=80)]}, 30),
        (
            {"phases": [PhaseSpec(steps=30), PhaseSpec(steps=30, train_set="subset", subset_size=80, reset_optimizer=True)]},
            45,
        ),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_stop_and_resume_reproduces_the_straight_run(tmp_path, changes, stop, device):
    spec = _spec(**changes, device=device)
    straight = MemorySink()
    train_run(spec, straight)

    first, second = MemorySink(), MemorySink()
    result = train_run(spec, first, checkpoint=tmp_path, should_stop=_stop_at(first, stop))
    assert result.stopped and result.final_step == stop
    assert (tmp_path / CHECKPOINT_NAME).exists()
    result = train_run(spec, second, checkpoint=tmp_path)
    assert not result.stopped and result.final_step == spec.total_steps

    _assert_same_series(straight, [first, second])
    assert min(second.series["train_loss"]) == stop  # resumed, not retrained from 0


TINY_MODEL = {"kind": "transformer", "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}
TWO_PHASES = [{"steps": 15}, {"steps": 15, "train_set": "subset", "subset_size": 40, "reset_optimizer": True}]


@pytest.mark.parametrize(
    "methods, stop",
    [
        ({"optimizer": {"eps": 1e-4}}, 15),
        ({"loss": "stablemax"}, 15),
        ({"optimizer": {"orthogonal_gradients": True}}, 15),
        ({"grad_filter": {"kind": "ema", "alpha": 0.9}}, 15),
        ({"grad_filter": {"kind": "ma", "window": 7}}, 12),
        ({"grad_filter": {"kind": "ma", "window": 7}, "phases": TWO_PHASES}, 18),  # the filter restarts with the optimizer
        ({"weight_norm": {"fixed": True}, "model": {**TINY_MODEL, "init_scale": 2.0}}, 15),
        ({"optimizer": {"kind": "muon"}}, 15),
        ({"optimizer": {"kind": "muon"}, "model": {"kind": "mlp", "d_embed": 16, "d_hidden": 32}}, 15),
        ({"precision": "bf16-mixed"}, 15),
    ],
    ids=[
        "eps",
        "stablemax",
        "orthogonal",
        "grokfast ema",
        "grokfast ma",
        "grokfast ma reset",
        "omnigrok",
        "muon",
        "muon mlp",
        "bf16-mixed",
    ],
)
def test_a_run_with_a_method_resumes_as_the_straight_run(tmp_path, methods, stop):
    base = {"task": {"p": 11, "train_size": 70}, "model": TINY_MODEL, "phases": [{"steps": 30}], "eval_every": 5,
            "train_loss_every": 1, "device": "cpu"}  # fmt: skip
    spec = RunSpec.model_validate({**base, **methods})
    straight, first, second = MemorySink(), MemorySink(), MemorySink()
    train_run(spec, straight)
    assert train_run(spec, first, checkpoint=tmp_path, should_stop=_stop_at(first, stop)).final_step == stop
    train_run(spec, second, checkpoint=tmp_path)
    _assert_same_series(straight, [first, second])
    assert min(second.series["train_loss"]) == stop


class _Crash(Exception):
    pass


def _crash_after(sink: MemorySink, step: int):
    def poll() -> bool:
        if sink.last_step >= step:
            raise _Crash
        return False

    return poll


def test_periodic_checkpoint_resumes_a_crashed_run(tmp_path):
    spec = _spec(checkpoint_every=20)
    straight = MemorySink()
    train_run(spec, straight)

    crashed = MemorySink()
    with pytest.raises(_Crash):
        train_run(spec, crashed, checkpoint=tmp_path, should_stop=_crash_after(crashed, 47))
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 40
    resumed = MemorySink()
    train_run(spec, resumed, checkpoint=tmp_path)

    assert min(resumed.series["train_loss"]) == 40
    _assert_same_series(straight, [crashed, resumed])


def test_finished_run_continues_when_resumed_with_more_phases(tmp_path):
    phases = [PhaseSpec(steps=30), PhaseSpec(steps=30, train_set="subset", subset_size=80)]
    straight = MemorySink()
    train_run(_spec(phases=phases), straight)

    first, second = MemorySink(), MemorySink()
    train_run(_spec(phases=phases[:1]), first, checkpoint=tmp_path)
    train_run(_spec(phases=phases), second, checkpoint=tmp_path)

    _assert_same_series(straight, [first, second])
    assert second.series["phase"][60] == 1.0


def test_same_spec_gives_identical_metrics_run_to_run():
    spec = _spec(optimizer=OptimizerSpec(batch_size=32))
    a, b = MemorySink(), MemorySink()
    train_run(spec, a)
    train_run(spec, b)
    assert a.series == b.series


def test_checkpoint_of_another_task_is_refused(tmp_path):
    train_run(_spec(phases=[PhaseSpec(steps=2)]), MemorySink(), checkpoint=tmp_path)
    other = _spec(task=TASK.model_copy(update={"data_seed": 1}))
    with pytest.raises(EngineError, match="checkpoint"):
        train_run(other, MemorySink(), checkpoint=tmp_path)


def test_checkpoint_loads_with_weights_only(tmp_path):
    train_run(_spec(phases=[PhaseSpec(steps=3)], optimizer=OptimizerSpec(batch_size=8)), MemorySink(), checkpoint=tmp_path)
    data = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert data["step"] == 3 and data["phase"] == 0
    assert {"model", "optimizer", "batch_rng", "train_idx"} <= set(data)


class _SavedSteps:
    """A CheckpointStorage that keeps the latest checkpoint and the step of every save."""

    def __init__(self):
        self.steps: list[int] = []
        self.latest = None

    def save(self, ckpt, keep: bool = False) -> None:
        self.steps.append(ckpt.step)
        self.latest = ckpt

    def load(self):
        return self.latest


def test_checkpoint_seconds_adds_time_based_checkpoints_to_the_step_cadence():
    spec = _spec(checkpoint_every=30)
    by_steps = _SavedSteps()
    train_run(spec, MemorySink(), checkpoint=by_steps)
    assert by_steps.steps == [30, 60]
    # Every step outlasts a microsecond, so every step is past due: one checkpoint after each.
    by_time = _SavedSteps()
    timed = MemorySink()
    train_run(spec, timed, checkpoint=by_time, checkpoint_seconds=1e-6)
    assert by_time.steps == list(range(1, 61))
    straight = MemorySink()
    train_run(spec, straight)
    _assert_same_series(straight, [timed])  # checkpoints change nothing in the series
    # An hour never passes here: only the step cadence.
    hourly = _SavedSteps()
    train_run(spec, MemorySink(), checkpoint=hourly, checkpoint_seconds=3600)
    assert hourly.steps == [30, 60]


def _first_streak_end(series: dict[int, float], level: float, for_steps: int) -> int | None:
    """The first evaluation step at which series >= level has held at every evaluation for for_steps."""
    since = None
    for step in sorted(series):
        since = (step if since is None else since) if series[step] >= level else None
        if since is not None and step - since >= for_steps:
            return step
    return None


def test_stop_when_ends_the_run_where_the_condition_has_held_long_enough_even_across_a_resume(tmp_path):
    stop_when = [{"metric": "train_acc", "at_least": 0.9, "for_steps": 20}]
    spec = _spec(phases=[PhaseSpec(steps=300)], eval_every=5, stop_when=stop_when)
    straight = MemorySink()
    train_run(spec.model_copy(update={"stop_when": []}), straight)
    expected = _first_streak_end(straight.series["train_acc"], 0.9, 20)
    assert expected is not None and 20 <= expected < 300

    early = MemorySink()
    result = train_run(spec, early)
    assert result.stopped_early_at_step == expected and result.final_step == expected and not result.stopped
    assert max(early.series["test_acc"]) == expected
    for step, value in early.series["test_acc"].items():
        assert value == pytest.approx(straight.series["test_acc"][step], abs=1e-6)

    # Interrupted inside the streak and resumed from the checkpoint: the same stopping step.
    first = MemorySink()
    interrupted = train_run(spec, first, checkpoint=tmp_path, should_stop=_stop_at(first, expected - 10))
    assert interrupted.stopped and interrupted.stopped_early_at_step is None
    resumed = train_run(spec, MemorySink(), checkpoint=tmp_path)
    assert resumed.stopped_early_at_step == expected


def test_stop_when_refuses_an_unknown_series_or_a_condition_without_exactly_one_bound():
    with pytest.raises(ValidationError, match="stop_when.0.metric"):
        _spec(stop_when=[{"metric": "test_accuracy", "at_least": 0.9}])
    with pytest.raises(ValidationError, match="at_least"):
        _spec(stop_when=[{"metric": "test_acc", "at_least": 0.9, "at_most": 0.95}])
    with pytest.raises(ValidationError, match="at_least"):
        _spec(stop_when=[{"metric": "test_acc"}])
