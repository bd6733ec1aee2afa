"""What the trainer logs, and when.

The paper's phenomena at P=47 (grokking, ungrokking, no grokking without weight decay or with
random labels) are trained through the whole stack in tests/e2e/test_experiment_kinds.py, on two
worker processes at once, rather than a second time here.
"""

import pytest
import torch

from engine.sink import MemorySink
from engine.spec import PROGRESS_METRICS, MlpSpec, OptimizerSpec, PhaseSpec, RunSpec, TaskSpec, log_spaced_steps
from engine.train import Ensemble, train_run

SERIES = {
    "train_loss", "train_acc", "test_loss", "test_acc", "param_norm", "norm_embed", "norm_attn",
    "norm_mlp", "norm_unembed", "train_correct_logit", "train_margin", "test_correct_logit",
    "test_margin", "softmax_collapse", "phase", "lr",
}  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"loss": "mse"},
        {"loss": "stablemax"},
        {"loss_precision": "float64"},
        {"precision": "bf16-mixed", "loss": "mse"},
        {"optimizer": OptimizerSpec(kind="sgd", lr=0.1, batch_size=16)},
        {"model": MlpSpec(d_embed=16, d_hidden=32)},
    ],
)
def test_every_series_is_logged_at_eval_steps_and_train_loss_between(changes):
    spec = RunSpec(
        task=TaskSpec(p=11, train_size=60), phases=[PhaseSpec(steps=20)],
        eval_every=10, train_loss_every=5, device="cpu", **changes,
    )  # fmt: skip
    sink = MemorySink()
    result = train_run(spec, sink)
    # the progress measures are on by default for the transformer on add, and not defined for the MLP
    assert set(sink.series) == SERIES | (set() if "model" in changes else set(PROGRESS_METRICS))
    assert sorted(sink.series["test_acc"]) == [0, 10, 20]
    assert sorted(sink.series["train_loss"]) == [0, 5, 10, 15, 20]
    assert result.final_step == 20 and not result.stopped
    assert result.final_metrics == {name: points[20] for name, points in sink.series.items()}
    assert sink.series["lr"][0] == 0.0 and sink.series["lr"][20] == spec.optimizer.lr  # warm-up from 0


def test_full_batch_train_loss_between_evals_matches_the_eval_forward():
    spec = RunSpec(
        task=TaskSpec(p=11, train_size=60), phases=[PhaseSpec(steps=4)], eval_every=2, train_loss_every=1, device="cpu"
    )
    every_step = MemorySink()
    train_run(spec, every_step)
    evals = MemorySink()
    train_run(spec.model_copy(update={"eval_every": 1}), evals)
    for step in (1, 3):
        assert every_step.series["train_loss"][step] == pytest.approx(evals.series["train_loss"][step], abs=1e-6)


def test_a_log_schedule_evaluates_at_its_steps_every_phase_boundary_and_the_end():
    phases = [PhaseSpec(steps=150), PhaseSpec(steps=50, train_set="subset", subset_size=30)]
    spec = RunSpec(task=TaskSpec(p=11, train_size=60), phases=phases, eval_schedule={"kind": "log", "points": 12}, device="cpu")
    sink = MemorySink()
    train_run(spec, sink)
    expected = {0, 1, 2, 3, 5, 8, 13, 21, 33, 52, 81, 127, 150, 200}
    assert log_spaced_steps(200, 12) | {150} == expected  # step 0, 12 points from 1 to 200, the boundary
    assert set(sink.series["test_acc"]) == expected == set(sink.series["train_loss"])
    assert spec.eval_step_count() == len(expected)
    # train_loss_every adds training-loss points between the evaluations, as on a linear schedule.
    between = MemorySink()
    train_run(spec.model_copy(update={"train_loss_every": 50}), between)
    assert set(between.series["train_loss"]) == expected | {50, 100}
    assert set(between.series["test_acc"]) == expected


def test_eval_step_count_equals_the_points_a_linear_run_logs():
    spec = RunSpec(
        task=TaskSpec(p=11, train_size=60), phases=[PhaseSpec(steps=25), PhaseSpec(steps=12)], eval_every=10, device="cpu"
    )
    sink = MemorySink()
    train_run(spec, sink)
    assert sorted(sink.series["test_acc"]) == [0, 10, 20, 25, 30, 37]
    assert spec.eval_step_count() == 6


def test_bf16_mixed_trains_float32_weights_along_the_float32_run():
    """The step's forward and backward in bfloat16; weights, optimizer state and losses float32."""
    runs = {}
    for precision in ("float32", "bf16-mixed"):
        spec = RunSpec(task=TaskSpec(p=11, train_size=60), phases=[PhaseSpec(steps=30)], eval_every=10,
                       train_loss_every=1, device="cpu", precision=precision)  # fmt: skip
        ensemble = Ensemble([spec], [MemorySink()], [None], torch.device("cpu"))
        ensemble.train(None, [0])
        assert ensemble.flat.dtype == torch.float32
        assert ensemble.optimizer.exp_avg.dtype == ensemble.optimizer.exp_avg_sq.dtype == torch.float32
        runs[precision] = ensemble.members_by_index[0].sink.series
    for step, loss in runs["float32"]["train_loss"].items():
        assert runs["bf16-mixed"]["train_loss"][step] == pytest.approx(loss, rel=0.02), step
    assert runs["bf16-mixed"]["train_loss"] != runs["float32"]["train_loss"]  # it did run in bfloat16
