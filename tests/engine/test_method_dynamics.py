"""The grokking methods' effects at CI scale (P = 47, a 32-wide transformer, half the pairs), each
asserted on medians over seeds with margins the measurements clear (docs/concepts.md#methods has
the numbers). Each run is an ensemble: one batched computation per method."""

from __future__ import annotations

from statistics import median
from typing import Any

import pytest

from engine.sink import MemorySink
from engine.spec import RunSpec
from engine.train import train_ensemble

from . import single_cpu_thread

TINY = {"kind": "transformer", "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}
SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _train(steps: int, seeds: list[int] = SEEDS, **changes: Any) -> list[MemorySink]:
    base = {"task": {"p": 47, "train_fraction": 0.5}, "model": TINY, "phases": [{"steps": steps}], "eval_every": 25,
            "progress_measures": False, "device": "cpu"}  # fmt: skip
    specs = [RunSpec.model_validate({**base, **changes, "seed": seed}) for seed in seeds]
    sinks = [MemorySink() for _ in specs]
    train_ensemble(specs, sinks)
    return sinks


def _median_at(sinks: list[MemorySink], name: str, step: int) -> float:
    return median(sink.series[name][step] for sink in sinks)


def test_without_weight_decay_softmax_collapses_and_orthogonal_gradients_generalise():
    # Prieto et al. 2025: without weight decay, float32 softmax cross-entropy memorises, its
    # confident pairs' losses round to exactly 0 (no gradient), and test accuracy stalls; ⊥Grad
    # removes the gradient along the weights (the naive loss minimisation that drives logits up)
    # and generalises. Measured, medians of seeds 0-2 at lr 0.01: softmax_collapse 0.005, 0.024,
    # 0.053 at steps 100, 200, 400 (0.12 at 600; ~0.6 at 3,000 with peaks ~0.9) while test
    # accuracy sits at 0.44-0.49; with ⊥Grad, test accuracy 0.81 at step 100 and 0.97 at 400.
    steps, adamw = 400, {"lr": 0.01, "weight_decay": 0.0}
    plain = _train(steps, optimizer=adamw)
    orthogonal = _train(steps, optimizer={**adamw, "orthogonal_gradients": True})
    collapse = [_median_at(plain, "softmax_collapse", step) for step in (100, 200, 400)]
    assert _median_at(plain, "train_acc", steps) == 1.0  # memorised
    assert collapse[0] < collapse[1] < collapse[2] and collapse[2] >= 0.03, collapse
    assert _median_at(plain, "test_acc", steps) <= 0.65
    assert _median_at(orthogonal, "test_acc", steps) >= 0.9


def test_grokfast_ema_pulls_ahead_where_adamw_is_slow_to_generalise():
    # Lee et al. 2024's recipe for this task: the EMA filter (alpha 0.98, lamb 2) with weight decay
    # 0.005 and minibatches, on the paper's transformer. Measured at P = 47, lr 1e-3, batches of
    # 512, seeds 0-2 (docs/concepts.md#methods): with the filter test accuracy reaches 0.95 at steps
    # 6,800, 7,350 and 8,950; without it none does in 10,000 (0.31-0.48). The whole race takes ~9
    # CPU-minutes, so the suite runs its first 4,000 steps on seeds 0 and 1, where the filter has
    # pulled ahead. How far differs between hosts: the runs are chaotic near the transition and float
    # rounding differs between CPUs, and seed 1 measured 0.53 on one 2-core host, 0.32 on another
    # (seed 0: 0.76 and 0.62; every eval bit for bit the same when repeated on one host), while
    # AdamW's sat at 0.27-0.29 on both. So the filter's lead is asserted on the mean over the seeds:
    # 0.36 and 0.19 measured, against a bound of 0.1.
    steps, seeds = 4000, [0, 1]
    recipe = {"model": {}, "optimizer": {"lr": 1e-3, "weight_decay": 0.005, "batch_size": 512}, "eval_every": 1000}
    plain = _train(steps, seeds, **recipe)
    filtered = _train(steps, seeds, **recipe, grad_filter={"kind": "ema", "alpha": 0.98, "lamb": 2.0})
    assert max(sink.series["test_acc"][steps] for sink in plain) <= 0.4  # AdamW has not generalised
    lead = _median_at(filtered, "test_acc", steps) - _median_at(plain, "test_acc", steps)  # of two: the means
    assert lead >= 0.1, lead
