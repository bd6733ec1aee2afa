"""The Section 3 toy model: grokking with all three ingredients, its ablations, and ungrokking."""

from __future__ import annotations

import copy
import math
from dataclasses import astuple

import pytest
import torch

from engine.sink import MemorySink
from engine.spec import OptimizerSpec, PhaseSpec, RunSpec, SpecError, TaskSpec, ToyCircuitsSpec
from engine.toy import _gradient_step, _metrics, _Subweights, train_toy_run

Q = 113
# Long enough for the paper's constants to grok (around step 9,400) and settle; ~0.1 s a run.
STEPS = 20_000
EVAL_EVERY = 10
# "Memorised": train loss below this. Train accuracy alone says little here: any positive logit
# at the right class beats the zeros elsewhere, so it is 1 from the first step on.
MEMORISED_LOSS = 0.1


def toy_spec(
    steps: int = STEPS,
    weight_decay: float = 0.005,
    phases: list[PhaseSpec] | None = None,
    train_size: int | None = None,
    eval_every: int = EVAL_EVERY,
    **toy: object,
) -> RunSpec:
    return RunSpec(
        task=TaskSpec(train_size=train_size),
        model=ToyCircuitsSpec(**toy),
        optimizer=OptimizerSpec(kind="sgd", lr=0.01, weight_decay=weight_decay, warmup_steps=0),
        phases=phases or [PhaseSpec(steps=steps)],
        eval_every=eval_every,
    )


def run(spec: RunSpec) -> MemorySink:
    sink = MemorySink()
    result = train_toy_run(spec, sink)
    assert result.final_step == spec.total_steps and not result.stopped
    return sink


def first_step(sink: MemorySink, name: str, predicate) -> int | None:
    return next((step for step, value in sink.points(name) if predicate(value)), None)


def values(sink: MemorySink, name: str, start: int = 0, stop: int | None = None) -> list[float]:
    return [v for s, v in sink.points(name) if s >= start and (stop is None or s <= stop)]


def test_full_toy_memorises_first_and_generalises_much_later():
    sink = run(toy_spec())
    memorised = first_step(sink, "train_loss", lambda v: v < MEMORISED_LOSS)
    generalised = first_step(sink, "test_acc", lambda v: v == 1.0)
    assert memorised is not None and memorised <= 1_000
    assert generalised is not None and generalised > 10 * memorised
    # Between the two, the net fits the training set and is wrong on every test input.
    assert set(values(sink, "train_acc", memorised, generalised)) == {1.0}
    assert set(values(sink, "test_acc", 0, generalised - EVAL_EVERY)) == {0.0}
    # Memorisation pushes test loss above chance; the late fall takes it far below its peak.
    peak = max(values(sink, "test_loss"))
    assert peak > math.log(Q) + 1
    assert sink.series["test_acc"][STEPS] == 1.0
    assert sink.series["test_loss"][STEPS] < 0.05 * peak
    assert sink.series["w_gen"][STEPS] > sink.series["w_mem"][STEPS]
    assert all(math.isfinite(v) for series in sink.series.values() for v in series.values())


def test_less_efficient_generalising_circuit_never_groks():
    sink = run(toy_spec(gen_norm_factor=3.0))
    assert set(values(sink, "test_acc")) == {0.0}
    assert sink.series["test_loss"][STEPS] > math.log(Q) / 2
    assert sink.series["w_mem"][STEPS] > sink.series["w_gen"][STEPS]


def test_without_speed_difference_generalisation_is_not_delayed():
    sink = run(toy_spec(gen_init=(0.0, 1.0), eval_every=1, steps=5_000))
    memorised = first_step(sink, "train_loss", lambda v: v < MEMORISED_LOSS)
    generalised = first_step(sink, "test_acc", lambda v: v == 1.0)
    assert memorised is not None and generalised is not None
    assert generalised <= 2 * memorised
    assert set(values(sink, "test_acc", generalised)) == {1.0}
    # C_mem never gets ahead, so test loss never climbs above its value at init (chance).
    assert max(values(sink, "test_loss")) <= math.log(Q) + 1e-9


def test_without_weight_decay_memorisation_is_never_undone():
    sink = run(toy_spec(weight_decay=0.0))
    assert sink.series["train_loss"][STEPS] < 0.01
    assert set(values(sink, "test_acc")) == {0.0}
    test_loss = values(sink, "test_loss")
    assert test_loss[-1] == max(test_loss)


@pytest.mark.parametrize(("subset_size", "keeps_generalising"), [(200, False), (800, True)])
def test_training_on_a_subset_below_critical_size_ungroks(subset_size: int, keeps_generalising: bool):
    # P_M = 0.002 * D: at D = 1,000 memorisation costs P_M = 2 (the paper's constant); the
    # critical size where it matches C_gen's P_G = 1 is D = 500.
    phases = [
        PhaseSpec(steps=STEPS),
        PhaseSpec(steps=STEPS, train_set="subset", subset_size=subset_size),
    ]
    sink = run(toy_spec(phases=phases, train_size=1_000, mem_norm_per_example=0.002))
    assert sink.series["test_acc"][STEPS] == 1.0
    assert sink.series["phase"][STEPS + EVAL_EVERY] == 1.0
    phase_two_acc = set(values(sink, "test_acc", STEPS))
    if keeps_generalising:
        assert phase_two_acc == {1.0}
    else:
        assert sink.series["test_acc"][2 * STEPS] == 0.0
        # The training set is still fitted: only the test inputs are lost.
        assert sink.series["train_loss"][2 * STEPS] < MEMORISED_LOSS


def test_logs_every_series_on_the_eval_schedule_and_at_the_last_step():
    sink = run(toy_spec(steps=20, eval_every=7))
    names = {"train_loss", "train_acc", "test_loss", "test_acc", "w_gen", "w_mem", "norm_gen", "norm_mem", "param_norm", "phase"}
    assert set(sink.series) == names
    for name in names:
        assert [step for step, _ in sink.points(name)] == [0, 7, 14, 20]
    assert sink.last_step == 20
    for step in (7, 14, 20):
        norms = sink.series["norm_gen"][step], sink.series["norm_mem"][step]
        assert sink.series["param_norm"][step] == pytest.approx(math.hypot(*norms))
        assert norms[1] == pytest.approx(2.0 * abs(sink.series["w_mem"][step]) ** (1 / 1.2))


def test_should_stop_ends_the_run_after_logging_the_current_step():
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) == 5

    sink = MemorySink()
    result = train_toy_run(toy_spec(steps=100, eval_every=50), sink, should_stop=should_stop)
    assert result.stopped and result.final_step == 5 and result.total_steps == 100
    assert max(sink.series["w_mem"]) == 5 and sink.last_step == 5
    assert result.final_metrics["w_mem"] == sink.series["w_mem"][5]


def test_closed_form_matches_cross_entropy_on_explicit_logits():
    """The closed-form losses and hand-written gradient against torch on full q-class logit rows."""
    toy = ToyCircuitsSpec(kappa=1.2)
    alpha, norm_factors = 0.005, (1.0, 2.0)
    params = _Subweights(0.3, 0.7, 0.5, -0.4)

    sub = torch.tensor(astuple(params), dtype=torch.float64, requires_grad=True)
    w_gen, w_mem = sub[0] * sub[1], sub[2] * sub[3]
    # Correct class 0; on a test input C_mem points at class 1. One-hot rows of q logits each.
    onehot = torch.eye(Q, dtype=torch.float64)
    train_logits = (w_gen + w_mem) * onehot[0]
    test_logits = w_gen * onehot[0] + w_mem * onehot[1]
    target = torch.tensor([0])
    train_loss = torch.nn.functional.cross_entropy(train_logits[None], target)
    test_loss = torch.nn.functional.cross_entropy(test_logits[None], target)
    penalty = alpha / 2 * sum(p**2 * w.abs() ** (2 / toy.kappa) for p, w in zip(norm_factors, (w_gen, w_mem)))
    (train_loss + penalty).backward()

    metrics = _metrics(params, toy, norm_factors, phase_index=0)
    assert metrics["train_loss"] == pytest.approx(train_loss.item())
    assert metrics["test_loss"] == pytest.approx(test_loss.item())
    stepped = copy.copy(params)
    _gradient_step(stepped, toy, norm_factors, alpha, lr=1.0)
    moved = [before - after for before, after in zip(astuple(params), astuple(stepped))]
    assert moved == pytest.approx(sub.grad.tolist())


@pytest.mark.parametrize("kappa", [1.2, 2.0, 3.0])
def test_zero_subweights_at_init_give_a_finite_gradient(kappa: float):
    params = _Subweights(0.0, 0.005, 0.0, 1.0)
    _gradient_step(params, ToyCircuitsSpec(kappa=kappa), (1.0, 2.0), alpha=0.005, lr=0.01)
    assert all(math.isfinite(v) for v in astuple(params))
    # Only the cross-entropy moves w_M1 off zero at the first step: 0.01 * (1 - 1/113) * w_M2.
    assert params.mem1 == pytest.approx(0.01 * (1 - 1 / Q))


def test_rejects_a_loss_the_toy_does_not_define():
    spec = toy_spec(steps=10).model_copy(update={"loss": "mse"})
    with pytest.raises(SpecError, match="loss"):
        train_toy_run(spec, MemorySink())


def test_train_loss_follows_its_own_schedule_between_evaluations():
    spec = toy_spec(steps=10, eval_every=5).model_copy(update={"train_loss_every": 2})
    sink = run(spec)
    assert [step for step, _ in sink.points("train_loss")] == [0, 2, 4, 5, 6, 8, 10]
    assert [step for step, _ in sink.points("test_acc")] == [0, 5, 10]


def test_a_full_phase_after_a_subset_restores_the_whole_training_set():
    phases = [
        PhaseSpec(steps=STEPS),
        PhaseSpec(steps=STEPS, train_set="subset", subset_size=200),
        PhaseSpec(steps=STEPS),
    ]
    sink = run(toy_spec(phases=phases, train_size=1_000, mem_norm_per_example=0.002))
    assert sink.series["test_acc"][2 * STEPS] == 0.0
    assert sink.series["test_acc"][3 * STEPS] == 1.0
