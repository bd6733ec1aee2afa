"""What the trainer logs, and when.

The paper's phenomena at P=47 (grokking, ungrokking, no grokking without weight decay or with
random labels) are trained through the whole stack in tests/e2e/test_experiment_kinds.py, on two
worker processes at once, rather than a second time here.
"""

import pytest

from engine.sink import MemorySink
from engine.spec import MlpSpec, OptimizerSpec, PhaseSpec, RunSpec, TaskSpec
from engine.train import train_run

SERIES = {
    "train_loss", "train_acc", "test_loss", "test_acc", "param_norm", "norm_embed", "norm_attn",
    "norm_mlp", "norm_unembed", "train_correct_logit", "train_margin", "test_correct_logit",
    "test_margin", "phase", "lr",
}  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"loss": "mse"},
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
    assert set(sink.series) == SERIES
    assert sorted(sink.series["test_acc"]) == [0, 10, 20]
    assert sorted(sink.series["train_loss"]) == [0, 5, 10, 15, 20]
    assert result.final_step == 20 and not result.stopped
    assert result.final_metrics == {name: points[20] for name, points in sink.series.items()}
    assert sink.series["lr"][0] == 0.0 and sink.series["lr"][20] == spec.optimizer.lr  # warm-up from 0


def test_full_batch_train_loss_between_evals_matches_the_eval_forward():
    spec = RunSpec(task=TaskSpec(p=11, train_size=60), phases=[PhaseSpec(steps=4)], eval_every=2, train_loss_every=1, device="cpu")
    every_step = MemorySink()
    train_run(spec, every_step)
    evals = MemorySink()
    train_run(spec.model_copy(update={"eval_every": 1}), evals)
    for step in (1, 3):
        assert every_step.series["train_loss"][step] == pytest.approx(evals.series["train_loss"][step], abs=1e-6)
