"""The training loop: one run of a RunSpec, phase by phase, reporting every metric to a sink."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.metrics import evaluate, per_example_loss
from engine.model import build_model
from engine.result import EngineError, RunResult
from engine.sink import MetricSink
from engine.spec import OptimizerSpec, RunSpec, ToyCircuitsSpec
from engine.tasks import build_task, derived_seed, subset_indices

BATCH_STREAM = 1  # names the minibatch sampler's random stream, apart from the init seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise EngineError("device: CUDA was requested but is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def learning_rate(opt: OptimizerSpec, step: int) -> float:
    """The learning rate of optimizer step `step` (1-based): linear warm-up from 0, then constant."""
    if step >= opt.warmup_steps:
        return opt.lr
    return opt.lr * step / opt.warmup_steps


def make_optimizer(opt: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    if opt.kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(
        model.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
    )


def phase_ends(spec: RunSpec) -> list[int]:
    """The step at which each phase ends: phase i produces steps ends[i-1] + 1 .. ends[i]."""
    ends, total = [], 0
    for phase in spec.phases:
        total += phase.steps
        ends.append(total)
    return ends


def train_run(
    spec: RunSpec,
    sink: MetricSink,
    *,
    checkpoint_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
) -> RunResult:
    """Trains one run, resuming from checkpoint_dir/checkpoint.pt when it exists.

    Metrics at step s describe the model after s optimizer steps. Every metric is logged at step 0,
    every eval_every steps, at each phase's last step and at the run's last step; train_loss alone
    also every train_loss_every steps, from the training forward (the minibatch's loss when
    batched). When should_stop() turns True between steps, the run is checkpointed (its points
    flushed first) and the result says stopped=True; resuming it gives the uninterrupted series.
    """
    if isinstance(spec.model, ToyCircuitsSpec):
        from engine.toy import train_toy_run

        return train_toy_run(spec, sink, should_stop=should_stop)
    return _Run(spec, sink, resolve_device(device or spec.device), checkpoint_dir).train(should_stop)


class _Run:
    """The state of one transformer or MLP run: model, optimizer, data and position in the run."""

    def __init__(self, spec: RunSpec, sink: MetricSink, device: torch.device, checkpoint_dir: Path | None):
        self.spec, self.sink, self.device, self.checkpoint_dir = spec, sink, device, checkpoint_dir
        self.total = spec.total_steps
        self.ends = phase_ends(spec)
        self.eval_steps = set(self.ends) | {0}
        self.data_key = json.dumps(
            {"task": spec.task.model_dump(mode="json"), "model": spec.model.model_dump(mode="json"), "seed": spec.seed}
        )

        data = build_task(spec.task)
        self.base_train_idx = data.train_idx
        self.tokens = data.tokens.to(device)  # (N, 3)
        self.targets = data.targets.to(device)  # (N,) the labels trained on
        self.labels = data.labels.to(device)  # (N,) the true labels, for the test set
        self.test_idx = data.test_idx.to(device)

        self.model = build_model(spec).to(device)
        self.optimizer = make_optimizer(spec.optimizer, self.model)
        self.batch_rng = torch.Generator().manual_seed(derived_seed(spec.seed, BATCH_STREAM))
        self.step, self.phase = 0, 0
        self._set_train_idx(data.train_idx)
        self.final_metrics: dict[str, float] = {}
        self.last_eval_step = -1
        self.pending_losses: list[tuple[int, Tensor]] = []  # logged at the next sync, not per step

        if checkpoint_dir is not None:
            self._resume(checkpoint_dir)

    def _set_train_idx(self, idx: Tensor) -> None:
        self.train_idx = idx.cpu()  # checkpointed and subsetted on the host
        self.train_idx_dev = idx.to(self.device)
        self.train_tokens = self.tokens[self.train_idx_dev]  # (D, 3)
        self.train_targets = self.targets[self.train_idx_dev]  # (D,)

    def _resume(self, checkpoint_dir: Path) -> None:
        ckpt = load_checkpoint(checkpoint_dir, self.device)
        if ckpt is None:
            return
        if ckpt.data_key != self.data_key:
            raise EngineError("checkpoint: it was written for a different task, model or seed")
        if ckpt.step > self.total:
            raise EngineError(f"checkpoint: it is at step {ckpt.step}, past the run's {self.total} steps")
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.batch_rng.set_state(ckpt.batch_rng)
        self.step, self.phase = ckpt.step, ckpt.phase
        self._set_train_idx(ckpt.train_idx)

    def _is_eval_step(self, step: int) -> bool:
        return step % self.spec.resolved_eval_every == 0 or step in self.eval_steps

    def _enter_phase(self, phase: int) -> None:
        spec = self.spec.phases[phase]
        if spec.train_set == "subset":
            assert spec.subset_size is not None
            self._set_train_idx(subset_indices(self.spec.task, self.train_idx, spec.subset_size, phase))
        else:
            self._set_train_idx(self.base_train_idx)
        if spec.reset_optimizer:
            self.optimizer = make_optimizer(self.spec.optimizer, self.model)
        self.phase = phase

    def _log_pending_losses(self) -> None:
        if self.pending_losses:
            steps, losses = zip(*self.pending_losses)
            for step, loss in zip(steps, torch.stack(losses).tolist()):
                self.sink.log(step, {"train_loss": loss})
            self.pending_losses = []

    def _evaluate(self) -> None:
        if self.last_eval_step == self.step:
            return
        self._log_pending_losses()
        metrics = evaluate(
            self.model, self.tokens, self.targets, self.labels,
            self.train_idx_dev, self.test_idx, self.spec.loss,
        )  # fmt: skip
        metrics["phase"] = float(self.phase)
        metrics["lr"] = learning_rate(self.spec.optimizer, self.step)
        self.sink.log(self.step, metrics)
        self.final_metrics, self.last_eval_step = metrics, self.step

    def _checkpoint(self) -> None:
        self._log_pending_losses()
        # Points before a checkpoint must be durable before it exists: a run resumed from it
        # never logs them again.
        self.sink.flush()
        if self.checkpoint_dir is not None:
            state = Checkpoint(
                step=self.step,
                phase=self.phase,
                train_idx=self.train_idx,
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                batch_rng=self.batch_rng.get_state(),
                data_key=self.data_key,
            )
            save_checkpoint(self.checkpoint_dir, state)

    def _batch(self) -> tuple[Tensor, Tensor]:
        size = self.spec.optimizer.batch_size
        if size is None or size >= len(self.train_idx):
            return self.train_tokens, self.train_targets
        pick = torch.randint(len(self.train_idx), (size,), generator=self.batch_rng).to(self.device)
        return self.train_tokens[pick], self.train_targets[pick]

    def _train_step(self) -> None:
        next_phase = next(i for i, end in enumerate(self.ends) if self.step + 1 <= end)
        if next_phase != self.phase:
            self._enter_phase(next_phase)
        lr = learning_rate(self.spec.optimizer, self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        tokens, targets = self._batch()
        loss = per_example_loss(self.model(tokens), targets, self.spec.loss).mean()
        # This forward sees the model after `step` steps: its loss is that step's train_loss.
        if self.step % self.spec.resolved_train_loss_every == 0 and not self._is_eval_step(self.step):
            self.pending_losses.append((self.step, loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1

    def train(self, should_stop: Callable[[], bool] | None) -> RunResult:
        if self._is_eval_step(self.step) or self.step == self.total:
            self._evaluate()
        checkpoint_every = self.spec.checkpoint_every
        while self.step < self.total:
            if should_stop is not None and should_stop():
                # No evaluation off the eval grid here: a stopped run that is resumed later
                # must end with exactly the series of an uninterrupted one.
                self._checkpoint()
                return RunResult(self.step, self.total, stopped=True, final_metrics=self.final_metrics)
            self._train_step()
            self.sink.progress(self.step, self.total)
            if self._is_eval_step(self.step) or self.step == self.total:
                self._evaluate()
            if checkpoint_every is not None and self.step % checkpoint_every == 0 and self.step < self.total:
                self._checkpoint()
        self._checkpoint()
        return RunResult(self.step, self.total, final_metrics=self.final_metrics)
