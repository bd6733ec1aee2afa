"""Trains the Section 3 toy model of Varma et al. (2023): two fixed circuits with learned strengths.

The model. Two lookup tables map an input to a class out of q = `num_classes`: C_gen is right on
every input; C_mem is right on training inputs and points at a wrong class on test inputs. Each
table is scaled by a learned strength that is a product of two subweights,

    w_G = w_G1 * w_G2,    w_M = w_M1 * w_M2,
    logits(x) = w_G * onehot(C_gen(x)) + w_M * onehot(C_mem(x)).

A circuit's parameter norm is ||theta_i|| = P_i * |w_i|^(1/kappa), so the weight-decay penalty
(alpha/2) * sum_i ||theta_i||^2 = (alpha/2) * sum_i P_i^2 * |w_i|^(2/kappa) is added to the training
cross-entropy, and plain gradient descent runs on the four subweights. Since kappa > 1 makes logits
grow faster than norm, the circuit with the smaller P_i (more logit per unit of norm) wins in the
long run; the subweight products make a circuit that starts near zero slow to grow.

Every input is alike, so no dataset is built: a training input has logit w_G + w_M at its class and
0 at the q - 1 others; a test input has w_G at its class, w_M at one wrong class and 0 at the q - 2
others. Losses, accuracies and gradients are therefore closed-form functions of four floats, which
is why a run of tens of thousands of steps takes a fraction of a second. (The same fact makes the
optimizer's batch_size irrelevant: every minibatch has the full batch's gradient.)

Constants, all fields of `ToyCircuitsSpec` with the paper's values as defaults: q = 113, P_G = 1,
P_M = 2, kappa = 1.2, (w_G1, w_G2) = (0, 0.005), (w_M1, w_M2) = (0, 1); from `OptimizerSpec`
(kind 'sgd'): lr 0.01 in the paper, alpha = weight_decay = 0.005, and the linear warm-up over
warmup_steps (set it to 0 for the paper's plain gradient descent).

The paper's ablations are spec fields:
- C_gen less efficient: gen_norm_factor > mem_norm_factor (e.g. P_G = 3) -> C_gen grows only part
  way, C_mem stays ahead and test accuracy stays 0.
- no speed difference: gen_init on mem_init's scale (e.g. (0, 1)) -> generalisation without delay.
- no weight decay: optimizer.weight_decay = 0 -> memorisation is never undone.
- C_mem's efficiency falls with D: mem_norm_per_example = c > 0 sets P_M = c * D, where D is the
  current phase's training-set size (subset_size for a 'subset' phase, task.resolved_train_size
  for a 'full' one). A later phase on a small D' makes memorisation efficient again: ungrokking.

The run is deterministic (seed and device are not used). Logged at the spec's evaluation steps
(RunSpec.is_eval_step: step 0, its schedule, each phase's last step): train_loss, train_acc,
test_loss, test_acc, w_gen, w_mem, norm_gen, norm_mem, param_norm = sqrt(norm_gen^2 + norm_mem^2),
and phase (0-based index); train_loss also every train_loss_every steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from engine.early_stop import EarlyStop
from engine.result import RunResult
from engine.sink import MetricSink
from engine.spec import RunSpec, SpecError, ToyCircuitsSpec


@dataclass
class _Subweights:
    gen1: float
    gen2: float
    mem1: float
    mem2: float

    @property
    def w_gen(self) -> float:
        return self.gen1 * self.gen2

    @property
    def w_mem(self) -> float:
        return self.mem1 * self.mem2


def train_toy_run(spec: RunSpec, sink: MetricSink, *, should_stop: Callable[[], bool] | None = None) -> RunResult:
    """Trains the toy model through every phase of `spec`, logging to `sink`."""
    toy = spec.model
    if not isinstance(toy, ToyCircuitsSpec):
        raise SpecError("model.kind", "train_toy_run needs a 'toy_circuits' model")
    _check_supported(spec)

    params = _Subweights(*toy.gen_init, *toy.mem_init)
    total = spec.total_steps
    norm_factors = _norm_factors_per_phase(spec, toy)
    metrics = _metrics(params, toy, norm_factors[0], phase_index=0)
    sink.log(0, metrics)
    early_stop = EarlyStop(spec.stop_when)
    early_stop.observe(0, metrics)
    is_eval_step = spec.eval_step_rule()

    step = 0
    for phase_index, phase in enumerate(spec.phases):
        for _ in range(phase.steps):
            lr = spec.optimizer.learning_rate(step + 1)
            _gradient_step(params, toy, norm_factors[phase_index], spec.optimizer.weight_decay, lr)
            step += 1
            stop = step < total and should_stop is not None and should_stop()
            if stop or is_eval_step(step):
                metrics = _metrics(params, toy, norm_factors[phase_index], phase_index)
                sink.log(step, metrics)
                if early_stop.observe(step, metrics) and step < total:
                    sink.progress(step, total)
                    sink.flush()
                    return RunResult(step, total, final_metrics=metrics, stopped_early_at_step=step)
            elif spec.logs_train_loss(step):
                metrics = _metrics(params, toy, norm_factors[phase_index], phase_index)
                sink.log(step, {"train_loss": metrics["train_loss"]})
            sink.progress(step, total)
            if stop:
                sink.flush()
                return RunResult(step, total, stopped=True, final_metrics=metrics)
    sink.flush()
    return RunResult(step, total, stopped=False, final_metrics=metrics)


def _check_supported(spec: RunSpec) -> None:
    # The closed form assumes cross-entropy and clean labels; anything else would train a
    # different model under the same name.
    if spec.loss != "cross_entropy":
        raise SpecError("loss", "the toy model is defined with cross-entropy only")
    if spec.task.random_labels or spec.task.label_noise > 0:
        raise SpecError("task", "the toy model has no label noise: C_mem is right on every training input")


def _norm_factors_per_phase(spec: RunSpec, toy: ToyCircuitsSpec) -> list[tuple[float, float]]:
    """(P_G, P_M) for each phase; P_M follows the phase's training-set size when it depends on D."""
    factors = []
    for train_size in spec.phase_train_sizes():
        if toy.mem_norm_per_example > 0:
            factors.append((toy.gen_norm_factor, toy.mem_norm_per_example * train_size))
        else:
            factors.append((toy.gen_norm_factor, toy.mem_norm_factor))
    return factors


def _gradient_step(
    params: _Subweights,
    toy: ToyCircuitsSpec,
    norm_factors: tuple[float, float],
    alpha: float,
    lr: float,
) -> None:
    """One gradient-descent step on cross-entropy + (alpha/2) sum_i P_i^2 |w_i1 w_i2|^(2/kappa).

    The gradient is written out by hand on python floats: autograd's per-step overhead on four
    scalars would make a 20,000-step run take seconds instead of a few hundredths of one.
    """
    exponent = 2.0 / toy.kappa
    # d(train loss)/d(logit margin s = w_G + w_M) = p_correct - 1 for softmax cross-entropy.
    dloss_dlogit = _softmax_correct(params.w_gen + params.w_mem, toy.num_classes) - 1.0
    grads = []
    for a, b, norm_factor in (
        (params.gen1, params.gen2, norm_factors[0]),
        (params.mem1, params.mem2, norm_factors[1]),
    ):
        decay = 0.5 * alpha * norm_factor**2
        grads.append(dloss_dlogit * b + decay * _abs_pow_grad(a, exponent) * abs(b) ** exponent)
        grads.append(dloss_dlogit * a + decay * _abs_pow_grad(b, exponent) * abs(a) ** exponent)
    params.gen1 -= lr * grads[0]
    params.gen2 -= lr * grads[1]
    params.mem1 -= lr * grads[2]
    params.mem2 -= lr * grads[3]


def _abs_pow_grad(x: float, exponent: float) -> float:
    """d|x|^e/dx = e |x|^(e-1) sign(x), taken as 0 at x = 0.

    The init w_G1 = w_M1 = 0 sits at x = 0 in every run. For e > 1 (the paper's 2/kappa = 5/3) the
    formula already gives the true derivative 0 there. For e <= 1 (kappa >= 2) |x|^e has no
    derivative at 0 (the formula raises 0 to a negative power; autograd gives NaN) and 0 is the
    symmetric choice.
    """
    if x == 0.0:
        return 0.0
    return exponent * abs(x) ** (exponent - 1.0) * math.copysign(1.0, x)


def _softmax_correct(margin: float, num_classes: int) -> float:
    """Softmax probability of a logit `margin` against num_classes - 1 logits of 0."""
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(-margin)) if margin > -700 else 0.0


def _metrics(params: _Subweights, toy: ToyCircuitsSpec, norm_factors: tuple[float, float], phase_index: int) -> dict[str, float]:
    w_gen, w_mem = params.w_gen, params.w_mem
    others_train = toy.num_classes - 1  # classes at logit 0 for a training input
    others_test = toy.num_classes - 2  # ... and for a test input, where C_mem takes one wrong class
    train_margin = w_gen + w_mem
    norm_gen = norm_factors[0] * abs(w_gen) ** (1.0 / toy.kappa)
    norm_mem = norm_factors[1] * abs(w_mem) ** (1.0 / toy.kappa)
    # Ties count as wrong: an argmax that lands on the right class only by index order is no skill.
    train_correct = train_margin > 0
    test_correct = w_gen > w_mem and (others_test == 0 or w_gen > 0)
    return {
        "train_loss": _logsumexp([(train_margin, 1), (0.0, others_train)]) - train_margin,
        "train_acc": float(train_correct),
        "test_loss": _logsumexp([(w_gen, 1), (w_mem, 1), (0.0, others_test)]) - w_gen,
        "test_acc": float(test_correct),
        "w_gen": w_gen,
        "w_mem": w_mem,
        "norm_gen": norm_gen,
        "norm_mem": norm_mem,
        "param_norm": math.hypot(norm_gen, norm_mem),
        "phase": float(phase_index),
    }


def _logsumexp(terms: list[tuple[float, int]]) -> float:
    """log sum_k count_k * exp(value_k), stable for large values; terms with count 0 drop out."""
    present = [(value, count) for value, count in terms if count > 0]
    top = max(value for value, _ in present)
    return top + math.log(sum(count * math.exp(value - top) for value, count in present))
