"""Run and experiment specifications: plain pydantic models, importable without torch.

Every default is the paper's standard setup (docs/paper.md): (a + b) mod 113, D = 3,830,
a 1-layer transformer with d_model 128, full-batch AdamW at lr 1e-3, betas (0.9, 0.98), wd 1.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

TaskOp = Literal[
    "add",
    "subtract",
    "multiply",
    "divide",
    "x2_plus_y2",
    "x2_plus_xy_plus_y2",
    "x3_plus_xy",
    "permutation",
]
Precision = Literal["float32", "bf16-mixed"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

DEFAULT_MAX_RUNS = 500
# A bound on one run's model: the paper's is 0.23M parameters; 50M is ~0.8 GB with AdamW state.
MAX_PARAMETERS = 50_000_000
# Evaluations per run when eval_every is not given: 500 points draw a grokking curve at any zoom a
# chart has pixels for, and at the paper config (every 20 steps) cost ~4% of training time
# (benchmarks/engine.py); every 10 steps costs twice that.
DEFAULT_EVALUATIONS = 500
# Checkpoints per run when checkpoint_every is not given: a lost worker or an interrupted
# `python -m engine run` then costs at most a twentieth of the run, for 20 checkpoint writes.
DEFAULT_CHECKPOINTS = 20


# The series every evaluation logs (engine.evaluation computes them), and the toy model's.
EVAL_METRICS = (
    "train_loss", "train_acc", "train_correct_logit", "train_margin",
    "test_loss", "test_acc", "test_correct_logit", "test_margin",
    "param_norm", "norm_embed", "norm_attn", "norm_mlp", "norm_unembed", "softmax_collapse",
)  # fmt: skip
# Nanda et al.'s progress measures (engine.progress_measures), logged beside EVAL_METRICS when a
# run's resolved_progress_measures is True: defined for the transformer on these ops.
PROGRESS_MEASURE_OPS = ("add", "subtract")
PROGRESS_MEASURES_DEFINED_FOR = f"the transformer on {' and '.join(PROGRESS_MEASURE_OPS)}"  # for error messages
KEY_FREQUENCIES = 5
PROGRESS_METRICS = (
    "restricted_loss", "excluded_loss", "gini_embed", "gini_logits",
    *(f"key_freq_{i}" for i in range(1, KEY_FREQUENCIES + 1)),
)  # fmt: skip
TOY_METRICS = (
    "train_loss", "train_acc", "test_loss", "test_acc", "w_gen", "w_mem", "norm_gen", "norm_mem", "param_norm",
)  # fmt: skip


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo in a spec must not silently train the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


class TaskSpec(StrictModel):
    """A binary-operation table; the training set is a random subset of its pairs."""

    op: TaskOp = "add"
    p: Annotated[int, Field(ge=2, le=1000)] = Field(113, description="Modulus for modular ops; ignored for 'permutation'.")
    n: Annotated[int, Field(ge=2, le=5)] = Field(5, description="Permutation degree for op='permutation' (group S_n).")
    train_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Absolute training-set size D; overrides train_fraction."
    )
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.3, description="Fraction of all pairs used for training when train_size is unset."
    )
    data_seed: Annotated[int, Field(ge=0)] = 0
    random_labels: bool = Field(False, description="Replace every training label with a random one (isolates memorisation).")
    label_noise: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.0, description="Fraction of training labels replaced with random ones."
    )

    @property
    def vocab_size(self) -> int:
        """Distinct operand tokens (the '=' token comes on top)."""
        return math.factorial(self.n) if self.op == "permutation" else self.p

    @property
    def num_pairs(self) -> int:
        v = self.vocab_size
        return v * (v - 1) if self.op == "divide" else v * v

    @property
    def resolved_train_size(self) -> int:
        if self.train_size is not None:
            return self.train_size
        return int(self.train_fraction * self.num_pairs)

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.op == "divide" and not is_prime(self.p):
            raise _field_error("p", f"p={self.p} is not prime; 'divide' needs a prime modulus")
        d = self.resolved_train_size
        if d >= self.num_pairs:
            raise _field_error(
                "train_size",
                f"training set of {d} leaves no test set: the task has {self.num_pairs} pairs",
            )
        if d < 1:
            raise _field_error("train_fraction", "training set would be empty")
        return self


class TransformerSpec(StrictModel):
    """The paper's 1-layer decoder-only transformer (Nanda et al.), no LayerNorm."""

    kind: Literal["transformer"] = "transformer"
    d_model: Annotated[int, Field(ge=1, le=4096)] = 128
    n_heads: Annotated[int, Field(ge=1, le=64)] = 4
    d_head: Annotated[int, Field(ge=1, le=1024)] = 32
    d_mlp: Annotated[int, Field(ge=1, le=16384)] = 512
    init_scale: Annotated[float, Field(gt=0, le=1000)] = Field(
        1.0, description="Multiplies every initial weight (Omnigrok, Liu et al. 2023: grokking depends on the init norm)."
    )


class MlpSpec(StrictModel):
    """Concatenated operand embeddings -> one ReLU hidden layer -> logits."""

    kind: Literal["mlp"] = "mlp"
    d_embed: Annotated[int, Field(ge=1, le=4096)] = 128
    d_hidden: Annotated[int, Field(ge=1, le=16384)] = 512
    init_scale: Annotated[float, Field(gt=0, le=1000)] = Field(
        1.0, description="Multiplies every initial weight (Omnigrok, Liu et al. 2023: grokking depends on the init norm)."
    )


class ToyCircuitsSpec(StrictModel):
    """The Section 3 toy model: two fixed lookup-table circuits with learned strengths."""

    kind: Literal["toy_circuits"] = "toy_circuits"
    num_classes: Annotated[int, Field(ge=2, le=100_000)] = 113
    gen_norm_factor: Annotated[float, Field(gt=0)] = Field(1.0, description="P_G")
    mem_norm_factor: Annotated[float, Field(gt=0)] = Field(2.0, description="P_M")
    mem_norm_per_example: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="If > 0, P_M = mem_norm_per_example * D: memorisation gets less efficient "
        "as the training set grows (ungrokking and semi-grokking).",
    )
    kappa: Annotated[float, Field(gt=0)] = 1.2
    gen_init: tuple[float, float] = Field((0.0, 0.005), description="(w_G1, w_G2) at init")
    mem_init: tuple[float, float] = Field((0.0, 1.0), description="(w_M1, w_M2) at init")


def _model_kind(value: Any) -> str:
    """A model's kind, the transformer's when it names none: `{"model": {"init_scale": 8}}` is the
    default model with one change, as an overlay or a sweep over `model.init_scale` means it."""
    if isinstance(value, Mapping):
        return value.get("kind", "transformer")
    return getattr(value, "kind", "transformer")


ModelSpec = Annotated[
    Annotated[TransformerSpec, Tag("transformer")]
    | Annotated[MlpSpec, Tag("mlp")]
    | Annotated[ToyCircuitsSpec, Tag("toy_circuits")],
    Discriminator(_model_kind),
]


class OptimizerSpec(StrictModel):
    kind: Literal["adamw", "sgd", "muon"] = Field(
        "adamw",
        description="AdamW, SGD, or Muon (torch.optim.Muon on the hidden matrices W_Q, W_K, W_V, W_O, W_in, "
        "W_out with Moonshot's RMS matching, so lr and weight_decay serve both; AdamW on the rest).",
    )
    lr: Annotated[float, Field(gt=0, le=10)] = 1e-3
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.98,
    )
    weight_decay: Annotated[float, Field(ge=0, le=100)] = 1.0
    eps: Annotated[float, Field(gt=0, le=1)] = Field(
        1e-8, description="Adam's epsilon (torch.optim.AdamW's default); slingshot dynamics depend on it."
    )
    muon_momentum: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        None, description="Muon's (Nesterov) momentum; kind 'muon' only, default 0.95 (torch's)."
    )
    orthogonal_gradients: bool = Field(
        False,
        description="⊥Grad (Prieto et al. 2025): each parameter tensor's gradient loses its component "
        "along that tensor (rescaled to its own norm) before the update.",
    )
    warmup_steps: Annotated[int, Field(ge=0)] = Field(
        10, description="Linear learning-rate warm-up from 0 (Nanda uses 10 steps)."
    )
    batch_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Minibatch size; None is full batch (the paper's setup)."
    )

    @model_validator(mode="after")
    def _check(self) -> OptimizerSpec:
        if self.muon_momentum is not None and self.kind != "muon":
            raise _field_error("muon_momentum", f"is Muon's; this optimizer is {self.kind!r}")
        return self

    @property
    def resolved_muon_momentum(self) -> float:
        return 0.95 if self.muon_momentum is None else self.muon_momentum

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step `step` (1-based): linear warm-up from 0, then constant."""
        if step >= self.warmup_steps:
            return self.lr
        return self.lr * step / self.warmup_steps


# A bound on Grokfast's moving-average window: its state is `window` copies of the gradient.
MAX_FILTER_WINDOW = 1000
MAX_FILTER_VALUES = 4 * MAX_PARAMETERS  # window x parameters: ~0.8 GB of float32 per member


class EmaGradFilter(StrictModel):
    """Grokfast-EMA (Lee et al. 2024, Algorithm 2): g + lamb * EMA_alpha(g), the slow component
    of the gradient amplified before the optimizer step."""

    kind: Literal["ema"]
    alpha: Annotated[float, Field(ge=0, lt=1)] = 0.98
    lamb: Annotated[float, Field(ge=0, le=1000)] = 2.0


class MaGradFilter(StrictModel):
    """Grokfast-MA (Lee et al. 2024, Algorithm 1): g + lamb * the mean of the last `window`
    gradients, once `window` gradients have been seen (the authors' warm-up)."""

    kind: Literal["ma"]
    window: Annotated[int, Field(ge=1, le=MAX_FILTER_WINDOW)] = 100
    lamb: Annotated[float, Field(ge=0, le=1000)] = 5.0


GradFilterSpec = Annotated[EmaGradFilter | MaGradFilter, Field(discriminator="kind")]


class WeightNormSpec(StrictModel):
    """Omnigrok's norm constraint (Liu et al. 2023, "Omnigrok: grokking beyond algorithmic data"):
    after every optimizer step each member's weights (all of them, as one vector) are rescaled to
    a fixed total L2 norm: its initial one ({"fixed": true}) or a given one ({"value": X})."""

    fixed: Literal[True] | None = None
    value: Annotated[float, Field(gt=0, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _check(self) -> WeightNormSpec:
        if (self.fixed is None) == (self.value is None):
            raise _field_error("fixed", 'give exactly one of "fixed": true and "value"')
        return self


class PhaseSpec(StrictModel):
    """A stretch of training on one training set; ungrokking is phase 1 on D, phase 2 on D' < D."""

    steps: Annotated[int, Field(ge=1, le=100_000_000)]
    train_set: Literal["full", "subset"] = "full"
    subset_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="D' for train_set='subset': drawn from the previous phase's set."
    )
    reset_optimizer: bool = False
    weight_decay: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="This phase's weight decay; None keeps optimizer.weight_decay."
    )

    @model_validator(mode="after")
    def _check(self) -> PhaseSpec:
        if self.train_set == "subset" and self.subset_size is None:
            raise _field_error("subset_size", "train_set='subset' needs subset_size")
        if self.train_set == "full" and self.subset_size is not None:
            raise _field_error("subset_size", "subset_size is only allowed with train_set='subset'")
        return self


class LinearEvalSchedule(StrictModel):
    """An evaluation every `every` steps (default: ~500 per run), as `eval_every` gives."""

    kind: Literal["linear"] = "linear"
    every: Annotated[int, Field(ge=1)] | None = None


class LogEvalSchedule(StrictModel):
    """`points` evaluations spaced geometrically from step 1 to the run's last step.

    Exactly `points` distinct steps from 1 to the last (log_spaced_steps: every step at first,
    where geometric spacing would put points under a step apart, then geometric), plus step 0 and
    every phase boundary. A 10^7-step run with 1,000 points evaluates each of its first 116 steps,
    462 of its first 10^4, and still 180 from step 10^6 on.
    """

    kind: Literal["log"]
    points: Annotated[int, Field(ge=2, le=100_000)] = 1_000


EvalSchedule = Annotated[LinearEvalSchedule | LogEvalSchedule, Field(discriminator="kind")]


@functools.cache
def log_spaced_steps(total: int, points: int) -> frozenset[int]:
    """The steps of LogEvalSchedule(points) over a run of `total` steps (boundaries not included):
    step 0, then min(points, total) distinct steps from 1 to total, each after step 1 the next
    geometric step over what is left (ratio (total / current) ** (1 / points left)), or the next
    step where that ratio would land on the current one."""
    steps, current = [0, 1], 1
    for left in range(min(points, total) - 1, 0, -1):
        ratio = (total / current) ** (1 / left)
        current = total if left == 1 else max(current + 1, round(current * ratio))
        steps.append(current)
    return frozenset(steps)


class StopCondition(StrictModel):
    """Stop the run (succeeded) once `metric` has been >= at_least (or <= at_most) at every
    evaluation for `for_steps` steps, e.g. test_acc >= 0.99 for 2,000 steps: it has grokked."""

    metric: str = Field(description="An evaluation series, e.g. test_acc or train_loss.")
    at_least: float | None = None
    at_most: float | None = None
    for_steps: Annotated[int, Field(ge=0, le=100_000_000)] = 0

    @model_validator(mode="after")
    def _check(self) -> StopCondition:
        if (self.at_least is None) == (self.at_most is None):
            raise _field_error("at_least", "give exactly one of at_least and at_most")
        return self

    def holds(self, value: float) -> bool:
        return value >= self.at_least if self.at_least is not None else value <= self.at_most  # type: ignore[operator]


class RunSpec(StrictModel):
    """Everything one training run needs; the engine's single input."""

    task: TaskSpec = Field(TaskSpec(), description="The modular-arithmetic table and its training split.")
    model: ModelSpec = Field(
        TransformerSpec(), description="The paper's 1-layer transformer (default), an MLP, or the Section 3 toy model."
    )
    optimizer: OptimizerSpec = Field(
        OptimizerSpec(), description="AdamW (default), SGD or Muon, with warm-up, weight decay and ⊥Grad."
    )
    loss: Literal["cross_entropy", "mse", "stablemax"] = Field(
        "cross_entropy",
        description="Softmax cross-entropy, MSE on one-hot targets, or StableMax cross-entropy "
        "(Prieto et al. 2025: s(x) = x + 1 for x >= 0, 1 / (1 - x) below, normalised).",
    )
    loss_precision: Literal["float32", "float64"] | None = Field(
        None,
        description="The float type the (stable)softmax cross-entropy is computed in; default float32 for "
        "cross_entropy, float64 for stablemax (as its authors compute it). Not for mse.",
    )
    precision: Precision = Field(
        "float32",
        description="The float type of the training step's forward and backward passes. 'bf16-mixed': "
        "they run in bfloat16 on a bfloat16 copy of the weights, while the weights, the optimizer state, "
        "the loss and every evaluation stay float32; ~0.6x the step's memory traffic (a GPU step is "
        "memory-bound), at bfloat16's 8-bit mantissa in activations and gradients (grokking came ~1.2x "
        "the steps later at P=113).",
    )
    grad_filter: GradFilterSpec | None = Field(
        None,
        description='Grokfast (Lee et al. 2024): {"kind": "ema", "alpha": 0.98, "lamb": 2.0} or '
        '{"kind": "ma", "window": 100, "lamb": 5.0}; its state is checkpointed and reset with the optimizer.',
    )
    weight_norm: WeightNormSpec | None = Field(
        None,
        description="Omnigrok's constraint: {\"fixed\": true} keeps each member's total weight norm at its "
        'initial value after every step, {"value": X} at X.',
    )
    phases: Annotated[list[PhaseSpec], Field(min_length=1, max_length=32)] = [PhaseSpec(steps=10_000)]
    seed: Annotated[int, Field(ge=0)] = Field(0, description="Model-initialisation seed.")
    eval_every: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Steps between evaluations; default logs ~500 points per run."
    )
    eval_schedule: EvalSchedule | None = Field(
        None,
        description='When to evaluate: {"kind": "linear", "every": N} (as eval_every) or '
        '{"kind": "log", "points": N} (geometrically spaced, for long runs).',
    )
    train_loss_every: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Steps between training-loss points; default: at the evaluations only."
    )
    checkpoint_every: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Steps between checkpoints (a final one is always written); default ~20 per run."
    )
    checkpoint_keep_every: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Also checkpoint every this many steps and keep those checkpoints for download "
        "(GET /v1/runs/{id}/checkpoints); by default only the latest checkpoint is kept.",
    )
    stop_when: Annotated[list[StopCondition], Field(max_length=16)] = Field(
        [], description="Stop early, succeeded, once any of these conditions has held long enough."
    )
    progress_measures: bool | None = Field(
        None,
        description="Log Nanda et al.'s progress measures (restricted_loss, excluded_loss, gini_embed, "
        "gini_logits, key_freq_1..5) at every evaluation; transformer on add or subtract only. "
        "Default: on where defined.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def resolved_loss_precision(self) -> Literal["float32", "float64"]:
        if self.loss_precision is not None:
            return self.loss_precision
        return "float64" if self.loss == "stablemax" else "float32"

    @property
    def supports_progress_measures(self) -> bool:
        return isinstance(self.model, TransformerSpec) and self.task.op in PROGRESS_MEASURE_OPS

    @property
    def resolved_progress_measures(self) -> bool:
        """Whether the evaluations log PROGRESS_METRICS: as asked, or by default where defined."""
        return self.supports_progress_measures if self.progress_measures is None else self.progress_measures

    def eval_metric_names(self) -> tuple[str, ...]:
        """Every series an evaluation of this run logs."""
        if isinstance(self.model, ToyCircuitsSpec):
            return TOY_METRICS
        return EVAL_METRICS + (PROGRESS_METRICS if self.resolved_progress_measures else ())

    @property
    def total_steps(self) -> int:
        return sum(phase.steps for phase in self.phases)

    @property
    def resolved_eval_every(self) -> int | None:
        """Steps between evaluations of a linear schedule; None for a log schedule."""
        if isinstance(self.eval_schedule, LogEvalSchedule):
            return None
        every = self.eval_schedule.every if self.eval_schedule is not None else self.eval_every
        return every or max(1, self.total_steps // DEFAULT_EVALUATIONS)

    def phase_ends(self) -> list[int]:
        """The step at which each phase ends (cumulative)."""
        return list(itertools.accumulate(phase.steps for phase in self.phases))

    def eval_step_rule(self) -> Callable[[int], bool]:
        """is_eval_step with the schedule worked out once: the training loops ask it every step."""
        every = self.resolved_eval_every
        always = frozenset({0, *self.phase_ends()})
        if every is None:
            return (always | log_spaced_steps(self.total_steps, self.eval_schedule.points)).__contains__  # type: ignore[union-attr]
        return lambda step: step % every == 0 or step in always

    def is_eval_step(self, step: int) -> bool:
        """Whether every metric is logged at `step`: step 0, the schedule's steps, each phase's
        last step and the run's last step."""
        return self.eval_step_rule()(step)

    def logs_train_loss(self, step: int) -> bool:
        """Whether `step` gets a train_loss point of its own (between evaluations, which log
        train_loss too): every train_loss_every steps when set."""
        return self.train_loss_every is not None and step % self.train_loss_every == 0 and not self.is_eval_step(step)

    def eval_step_count(self) -> int:
        """How many evaluations the run logs, computed without training it."""
        ends = set(self.phase_ends())
        every = self.resolved_eval_every
        if every is not None:
            return self.total_steps // every + 1 + sum(1 for end in ends if end % every)
        return len(log_spaced_steps(self.total_steps, self.eval_schedule.points) | ends)  # type: ignore[union-attr]

    def loss_point_count(self) -> int:
        """How many train_loss points the run logs between its evaluations (logs_train_loss),
        computed without training it: every train_loss_every-th step that is not an eval step."""
        every = self.train_loss_every
        if every is None:
            return 0
        eval_every = self.resolved_eval_every
        if eval_every is not None:
            # Multiples of both steps are eval steps, and so are the phase ends off the eval grid.
            shared = self.total_steps // math.lcm(every, eval_every)
            shared += sum(1 for end in set(self.phase_ends()) if end % every == 0 and end % eval_every)
        else:
            steps = log_spaced_steps(self.total_steps, self.eval_schedule.points) | set(self.phase_ends())  # type: ignore[union-attr]
            shared = sum(1 for step in steps if step > 0 and step % every == 0)
        return self.total_steps // every - shared

    def kept_checkpoint_count(self) -> int:
        """How many checkpoints the run keeps for download (keeps_checkpoint_at), computed without training it."""
        return 0 if self.checkpoint_keep_every is None else self.total_steps // self.checkpoint_keep_every

    @property
    def resolved_checkpoint_every(self) -> int:
        return self.checkpoint_every or max(self.resolved_eval_every or 1, self.total_steps // DEFAULT_CHECKPOINTS)

    def keeps_checkpoint_at(self, step: int) -> bool:
        """Whether the checkpoint after `step` steps is kept for download (checkpoint_keep_every)."""
        return self.checkpoint_keep_every is not None and step % self.checkpoint_keep_every == 0

    def checkpoints_at(self, step: int) -> bool:
        """Whether training writes a checkpoint after `step` steps (the last one always does)."""
        return step % self.resolved_checkpoint_every == 0 or self.keeps_checkpoint_at(step)

    def phase_train_sizes(self) -> list[int]:
        """Each phase's training-set size: the task's D, or D' for a 'subset' phase."""
        return [phase.subset_size or self.task.resolved_train_size for phase in self.phases]

    @property
    def final_train_size(self) -> int:
        """The training-set size in force at the last phase (D' for ungrokking's phase 2)."""
        return self.phase_train_sizes()[-1]

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        if self.eval_every is not None and self.eval_schedule is not None:
            raise _field_error("eval_schedule", "give eval_every or eval_schedule, not both")
        if self.loss_precision is not None and self.loss == "mse":
            raise _field_error("loss_precision", "sets the precision of a softmax or StableMax cross-entropy, not of mse")
        if self.progress_measures and not self.supports_progress_measures:
            raise _field_error(
                "progress_measures",
                f"defined for {PROGRESS_MEASURES_DEFINED_FOR} only, not the {self.model.kind} on {self.task.op}",
            )
        metrics = self.eval_metric_names()
        for i, condition in enumerate(self.stop_when):
            if condition.metric not in metrics:
                raise _field_error(
                    f"stop_when.{i}.metric", f"{condition.metric!r} is not an evaluation series; one of {', '.join(metrics)}"
                )
        sizes = self.phase_train_sizes()
        for i, (previous, size) in enumerate(zip([self.task.resolved_train_size, *sizes], sizes)):
            if self.phases[i].train_set == "subset" and size > previous:
                raise _field_error(
                    f"phases.{i}.subset_size",
                    f"subset of {size} is larger than the previous phase's training set of {previous}",
                )
        params = parameter_count(self)
        if params > MAX_PARAMETERS:
            raise _field_error("model", f"{params:,} parameters is over the limit of {MAX_PARAMETERS:,}")
        if isinstance(self.grad_filter, MaGradFilter) and self.grad_filter.window * params > MAX_FILTER_VALUES:
            raise _field_error(
                "grad_filter.window",
                f"a window of {self.grad_filter.window} gradients of {params:,} parameters is over the "
                f"limit of {MAX_FILTER_VALUES:,} values",
            )
        methods = {
            "grad_filter": self.grad_filter, "weight_norm": self.weight_norm, "loss_precision": self.loss_precision,
            "optimizer.orthogonal_gradients": self.optimizer.orthogonal_gradients,
        }  # fmt: skip
        for field, value in methods.items():
            if isinstance(self.model, ToyCircuitsSpec) and value:
                raise _field_error(field, "the toy model trains with plain gradient descent, without the grokking methods")
        if isinstance(self.model, ToyCircuitsSpec) and self.precision != "float32":
            raise _field_error("precision", "the toy model trains in float32 only")
        if isinstance(self.model, ToyCircuitsSpec) and self.optimizer.kind != "sgd":
            raise _field_error("optimizer.kind", "the toy model trains with plain gradient descent ('sgd')")
        return self


def parameter_count(spec: RunSpec) -> int:
    """Trainable parameters of the spec's model, computed without building it."""
    model, vocab = spec.model, spec.task.vocab_size
    if isinstance(model, TransformerSpec):
        attn = model.n_heads * model.d_head * model.d_model * 4
        mlp = 2 * model.d_model * model.d_mlp + model.d_mlp + model.d_model
        return (vocab + 1) * model.d_model + 3 * model.d_model + attn + mlp + model.d_model * vocab
    if isinstance(model, MlpSpec):
        return vocab * model.d_embed + 2 * model.d_embed * model.d_hidden + model.d_hidden + model.d_hidden * vocab
    return 4


class SweepSpec(StrictModel):
    """Expands one spec into several runs over dotted field paths, e.g. 'task.train_size'.

    `grid` takes the cartesian product of its lists; `zip` walks its lists in lockstep (all of one
    length); both together give grid x zip.
    """

    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    zip: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise _field_error("zip", "every list under 'zip' must have the same length")
        overlap = set(self.grid) & set(self.zip)
        if overlap:
            raise _field_error("zip", f"fields swept twice: {sorted(overlap)}")
        for path in [*self.grid, *self.zip]:
            _check_path(path)
        return self

    def assignments(self) -> list[dict[str, Any]]:
        grid_keys = list(self.grid)
        grid_rows = [dict(zip(grid_keys, values)) for values in itertools.product(*self.grid.values())]
        zip_len = len(next(iter(self.zip.values()))) if self.zip else 1
        zip_rows = [{k: v[i] for k, v in self.zip.items()} for i in range(zip_len)]
        return [{**g, **z} for g in grid_rows for z in zip_rows]

    def count(self) -> int:
        zip_len = len(next(iter(self.zip.values()))) if self.zip else 1
        return math.prod(len(v) for v in self.grid.values()) * zip_len


class ExperimentSpec(RunSpec):
    """A run spec plus the seeds and sweep that expand it into runs."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1000)] = [0]
    sweep: SweepSpec = SweepSpec()

    def run_count(self) -> int:
        return self.sweep.count() * len(self.seeds)

    def expand(self, max_runs: int = DEFAULT_MAX_RUNS) -> list[RunSpec]:
        """Every run of the experiment, validated; raises SpecError naming the offending field."""
        count = self.run_count()
        if count > max_runs:
            raise SpecError(
                "sweep",
                f"the experiment expands to {count} runs, over the limit of {max_runs}",
            )
        base = self.model_dump(exclude={"name", "seeds", "sweep"})
        runs = []
        for assignment in self.sweep.assignments():
            for seed in self.seeds:
                data = copy.deepcopy(base)
                data["seed"] = seed
                try:
                    for path, value in assignment.items():
                        _set_path(data, path, value)
                    runs.append(RunSpec.model_validate(data))
                except (IndexError, KeyError, TypeError, ValueError) as exc:
                    if not isinstance(exc, ValidationError):
                        raise SpecError("sweep", f"cannot set {assignment}: {exc}") from exc
                    raise SpecError.of(exc, under="sweep", note=f" (for {assignment})") from exc
        return runs


class SpecError(ValueError):
    """A spec that validated field by field but is impossible as a whole; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    @classmethod
    def of(cls, exc: ValidationError, *, under: str, note: str = "") -> SpecError:
        """The first error of a nested model's validation, named under the field `under`."""
        field, message = error_field(exc.errors()[0])
        return cls(f"{under}.{field}" if field else under, message + note)


def error_field(err: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> tuple[str, str]:
    """(dotted field, message) of one pydantic error; `ignore` drops location parts (FastAPI's
    'body', 'query'...). A validator's ValueError names its field as 'field: why' (_field_error):
    that field joins the location and the message keeps only the why."""
    parts = [str(part) for part in err.get("loc", ()) if part not in ignore]
    message = str(err.get("msg", "invalid"))
    named, colon, why = message.removeprefix("Value error, ").partition(": ")
    if message.startswith("Value error, ") and colon and named and " " not in named:
        parts.append(named)
        message = why
    return ".".join(parts), message


def _field_error(field: str, message: str) -> ValueError:
    # pydantic reports a ValueError raised in a validator with the model's location; prefixing
    # the field keeps the offending name in the message the API shows.
    return ValueError(f"{field}: {message}")


_SWEEPABLE_ROOTS = set(RunSpec.model_fields)


def _check_path(path: str) -> None:
    root = path.split(".", 1)[0]
    if root not in _SWEEPABLE_ROOTS or root == "seed" and "." in path:
        raise _field_error(f"sweep.{path}", f"unknown field '{root}'")


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def spec_path_error(path: str) -> str | None:
    """Why a dotted path names no field of a RunSpec (None when it names one), e.g.
    'task.train_size', 'phases.1.subset_size', 'model.d_model' (a field of any model kind)."""
    if not path or len(path) > 200:
        return "a dotted spec path of 1 to 200 characters"
    kinds: list[Any] = [RunSpec]
    for depth, part in enumerate(path.split(".")):
        kinds = [inner for kind in kinds for inner in _field_types(kind, part)]
        if not kinds:
            return f"unknown spec field '{'.'.join(path.split('.')[: depth + 1])}'"
    return None


def _field_types(kind: Any, part: str) -> list[Any]:
    """The types `part` of a value of type `kind` may have: a model's field, a list or tuple's
    item (by index), a dict's value; unions and Annotated are looked through."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return _field_types(args[0], part)
    if origin in (Union, types.UnionType):
        return [found for member in args for found in _field_types(member, part)]
    if kind is Any:
        return [Any]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(part)
        return [field.annotation] if field is not None else []
    if origin in (list, tuple) and part.isdigit():
        if origin is tuple and args and args[-1] is not Ellipsis:
            return [args[int(part)]] if int(part) < len(args) else []
        return [args[0] if args else Any]
    if origin is dict and args:
        return [args[1]]
    return []
