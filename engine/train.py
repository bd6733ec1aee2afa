"""The training loop: K runs of one model shape trained as one batched computation (an ensemble),
each phase by phase with its own step counter, reporting every metric to its own sink. A lone run
is an ensemble of one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.checkpoint import Checkpoint, CheckpointStorage, CheckpointWrite, CheckpointWriter, as_storage, copy_to_host
from engine.memory import members_that_fit
from engine.evaluation import evaluate, per_example_loss
from engine.model import build_model, mlp_logits, transformer_logits, transformer_pair_logits
from engine.optim import EnsembleOptimizer
from engine.packing import pack_key
from engine.progress_measures import FourierBasis
from engine.result import EngineError, RunResult
from engine.sink import MetricSink
from engine.spec import RunSpec, ToyCircuitsSpec, TransformerSpec
from engine.early_stop import EarlyStop
from engine.datasets import build_task, derived_seed, subset_indices

BATCH_STREAM = 1  # names the minibatch sampler's random stream, apart from the init seed
# Checkpoint events that may wait for the writer thread besides the one being written: training
# waits on the store only beyond this. Each holds its members' model and optimizer state on the host.
PENDING_CHECKPOINTS = 2


def resolve_device(name: str) -> torch.device:
    """The device a spec's `device` names: `auto` is CUDA when a GPU is visible, else the CPU;
    `cuda` without a GPU is an EngineError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("device: CUDA was requested but is not available")
    # TF32 is the process owner's choice (engine.device.configure_tf32), not training's.
    return torch.device(name)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor made inside the step loop, copied to the device without waiting for it: a
    copy from pageable memory makes the host wait for the GPU's queue to drain, every step."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def size_classes(sizes: Sequence[int]) -> list[list[int]]:
    """Groups member indices so that within a group the largest size is at most twice the smallest:
    padded to its group's largest, no member computes over more than 2x its own examples."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and 2 * sizes[i] >= sizes[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(group) for group in groups]


def train_run(
    spec: RunSpec,
    sink: MetricSink,
    *,
    checkpoint: CheckpointStorage | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    checkpoint_seconds: float | None = None,
) -> RunResult:
    """Trains one run, resuming from the latest checkpoint in `checkpoint` (a storage, or a
    folder: engine.checkpoint) when there is one. Checkpoints are written at the spec's steps
    (RunSpec.checkpoints_at) and, with checkpoint_seconds, also once that much training time
    has passed since the last one, so that a lost worker costs at most that long.

    Metrics at step s describe the model after s optimizer steps. Every metric is logged at the
    spec's evaluation steps (RunSpec.is_eval_step: step 0, its schedule, each phase's last step);
    train_loss alone also every train_loss_every steps, from the training forward (the minibatch's
    loss when batched). When should_stop() turns True between steps, the run is checkpointed (its points
    flushed first) and the result says stopped=True; resuming it gives the uninterrupted series.
    An error of the sink or the checkpoint is raised, not returned.
    """
    if isinstance(spec.model, ToyCircuitsSpec):
        from engine.toy import train_toy_run

        return train_toy_run(spec, sink, should_stop=should_stop)
    stop = None if should_stop is None else lambda k: should_stop()
    ensemble = Ensemble(
        [spec], [sink], [as_storage(checkpoint)], resolve_device(device or spec.device), checkpoint_seconds
    )
    result = ensemble.train(stop, [0])[0]
    if ensemble.members_by_index[0].exception is not None:
        raise ensemble.members_by_index[0].exception
    return result


def train_ensemble(
    specs: Sequence[RunSpec],
    sinks: Sequence[MetricSink],
    *,
    checkpoints: Sequence[CheckpointStorage | Path | None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    device: str | None = None,
    memory_bytes: int | None = None,
    checkpoint_seconds: float | None = None,
) -> list[RunResult]:
    """Trains specs[k] into sinks[k] (checkpointing to checkpoints[k]) exactly as train_run
    would, with specs of one pack_key batched together; results in the order of specs.

    should_stop(k) is polled between member k's steps: a stopped member is checkpointed and drops
    out, the others go on. A member whose sink or checkpoint fails drops out with the error in its
    RunResult. Members may resume at different steps and have different phase schedules. A group
    larger than the device's free memory holds (or memory_bytes, when given: engine.memory) trains
    in consecutive chunks that each fit. checkpoint_seconds: as in train_run.
    """
    storages = [as_storage(c) for c in checkpoints] if checkpoints is not None else [None] * len(specs)
    groups: dict[Hashable, list[int]] = {}
    for k, spec in enumerate(specs):
        key = pack_key(spec)
        groups.setdefault(key if key is not None else ("alone", k), []).append(k)
    results: list[RunResult | None] = [None] * len(specs)
    for indices in groups.values():
        spec = specs[indices[0]]
        if isinstance(spec.model, ToyCircuitsSpec):
            from engine.toy import train_toy_run

            stop = None if should_stop is None else lambda k=indices[0]: should_stop(k)
            results[indices[0]] = train_toy_run(spec, sinks[indices[0]], should_stop=stop)
            continue
        torch_device = resolve_device(device or spec.device)
        fit = members_that_fit([specs[k] for k in indices], torch_device, memory_bytes)
        for start in range(0, len(indices), fit):
            chunk = indices[start : start + fit]
            ensemble = Ensemble(
                [specs[k] for k in chunk], [sinks[k] for k in chunk], [storages[k] for k in chunk], torch_device,
                checkpoint_seconds,
            )  # fmt: skip
            for k, result in zip(chunk, ensemble.train(should_stop, chunk)):
                results[k] = result
    return [result for result in results if result is not None]


class _Member:
    """One run's own state: spec, sink, data, position in the run and pending points."""

    def __init__(self, spec: RunSpec, sink: MetricSink, storage: CheckpointStorage | None, device: torch.device):
        self.spec, self.sink, self.storage, self.device = spec, sink, storage, device
        self.total = spec.total_steps
        self.ends = spec.phase_ends()  # phase i produces steps ends[i-1] + 1 .. ends[i]
        self.is_eval_step = spec.eval_step_rule()
        self.data_key = json.dumps(
            {"task": spec.task.model_dump(mode="json"), "model": spec.model.model_dump(mode="json"), "seed": spec.seed}
        )
        data = build_task(spec.task)
        self.base_train_idx = data.train_idx
        self.targets = data.targets.to(device)  # (N,) the labels trained on
        self.test_idx = data.test_idx.to(device)
        self.batch_rng = torch.Generator().manual_seed(derived_seed(spec.seed, BATCH_STREAM))
        self.step, self.phase = 0, 0
        self.set_train_idx(data.train_idx)
        self.final_metrics: dict[str, float] = {}
        self.last_eval_step = -1
        self.pending_losses: list[tuple[int, Tensor]] = []  # logged at the next sync, not per step
        self.result: RunResult | None = None
        self.exception: Exception | None = None
        self.early_stop = EarlyStop(spec.stop_when)
        self.stops_early = False  # a stop_when condition held long enough at the last evaluation

    def set_train_idx(self, idx: Tensor) -> None:
        self.train_idx = idx.cpu()  # checkpointed and subsetted on the host
        self.train_idx_dev = idx.to(self.device)

    @property
    def batch_size(self) -> int:
        size = self.spec.optimizer.batch_size
        return len(self.train_idx) if size is None else min(size, len(self.train_idx))

    def batch_idx(self) -> Tensor:
        """This step's training examples: the whole set, or a minibatch drawn from batch_rng."""
        if self.batch_size == len(self.train_idx):
            return self.train_idx_dev
        pick = torch.randint(len(self.train_idx), (self.batch_size,), generator=self.batch_rng)
        return self.train_idx_dev[to_device(pick, self.device)]

    @property
    def weight_decay(self) -> float:
        override = self.spec.phases[self.phase].weight_decay
        return self.spec.optimizer.weight_decay if override is None else override

    def next_phase(self) -> int:
        return next(i for i, end in enumerate(self.ends) if self.step + 1 <= end)

    def enter_phase(self, phase: int) -> None:
        spec = self.spec.phases[phase]
        if spec.train_set == "subset":
            assert spec.subset_size is not None
            self.set_train_idx(subset_indices(self.spec.task, self.train_idx, spec.subset_size, phase))
        else:
            self.set_train_idx(self.base_train_idx)
        self.phase = phase

    def needs_eval(self) -> bool:
        return self.is_eval_step(self.step) and self.last_eval_step != self.step

    def logs_train_loss(self) -> bool:
        """Whether this step's training forward gives a train_loss point (eval steps get the eval's)."""
        return self.spec.logs_train_loss(self.step)

    def log_pending_losses(self) -> None:
        if self.pending_losses:
            steps, losses = zip(*self.pending_losses)
            self.pending_losses = []
            for step, loss in zip(steps, torch.stack(losses).tolist()):
                self.sink.log(step, {"train_loss": loss})

    def log_eval(self, metrics: dict[str, float]) -> None:
        self.log_pending_losses()
        metrics["phase"] = float(self.phase)
        metrics["lr"] = self.spec.optimizer.learning_rate(self.step)
        self.sink.log(self.step, metrics)
        self.final_metrics, self.last_eval_step = metrics, self.step
        self.stops_early = self.early_stop.observe(self.step, metrics) and self.step < self.total

    def flush_before_checkpoint(self) -> Callable[[], None] | None:
        """Points before a checkpoint must be durable before it exists: a run resumed from it never
        logs them again. Logs the pending losses and flushes the sink here, or returns its flush
        for the checkpoint writer to call just before the save when the sink allows that
        (MetricSink.flush: flush_from_any_thread)."""
        self.log_pending_losses()
        if getattr(self.sink, "flush_from_any_thread", False):
            return self.sink.flush
        self.sink.flush()
        return None

    def checkpoint(self, model: dict[str, Tensor], optimizer: dict[str, Any]) -> Checkpoint:
        """The state to resume from; model and optimizer still to be copied off the device."""
        return Checkpoint(
            step=self.step, phase=self.phase, train_idx=self.train_idx, model=model,
            optimizer=optimizer, batch_rng=self.batch_rng.get_state(), data_key=self.data_key,
            stop_held_since=list(self.early_stop.held_since),
        )  # fmt: skip

    def load(self, ckpt: Checkpoint) -> None:
        if ckpt.data_key != self.data_key:
            raise EngineError("checkpoint: it was written for a different task, model or seed")
        if ckpt.step > self.total:
            raise EngineError(f"checkpoint: it is at step {ckpt.step}, past the run's {self.total} steps")
        self.batch_rng.set_state(ckpt.batch_rng)
        self.step, self.phase = ckpt.step, ckpt.phase
        self.early_stop = EarlyStop(self.spec.stop_when, ckpt.stop_held_since)
        self.set_train_idx(ckpt.train_idx)

    def fail(self, exc: Exception) -> None:
        self.exception = exc
        self.result = RunResult(
            self.step, self.total, final_metrics=self.final_metrics, error=f"{type(exc).__name__}: {exc}"
        )


class Ensemble:
    """K members' parameters stacked along a leading dimension, their optimizer and the step loop.

    Row r of every parameter belongs to self.members[r]; a member that finishes, stops or fails
    drops out and the rows are compacted.
    """

    def __init__(
        self,
        specs: Sequence[RunSpec],
        sinks: Sequence[MetricSink],
        storages: Sequence[CheckpointStorage | None],
        device: torch.device,
        checkpoint_seconds: float | None = None,
    ):
        self.device = device
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpointed_at = time.monotonic()  # the members' last checkpoint (all are written together)
        self.loss_kind = specs[0].loss
        transformer = isinstance(specs[0].model, TransformerSpec)
        self.logits_fn = transformer_logits if transformer else mlp_logits
        self.eval_logits_fn = transformer_pair_logits if transformer else mlp_logits  # over all pairs
        table = build_task(specs[0].task)  # one task table: the pairs and true labels are shared
        self.tokens = table.tokens.to(device)  # (N, 3)
        self.fourier = FourierBasis.of(specs[0].task, device) if any(s.resolved_progress_measures for s in specs) else None
        self.labels = table.labels.to(device)  # (N,)
        self.members = [_Member(spec, sink, d, device) for spec, sink, d in zip(specs, sinks, storages)]
        self.members_by_index = list(self.members)
        states = [build_model(spec).state_dict() for spec in specs]
        checkpoints = [None if d is None else d.load() for d in storages]
        for member, state, ckpt in zip(self.members, states, checkpoints):
            if ckpt is not None:
                try:
                    member.load(ckpt)
                except EngineError as exc:
                    member.fail(exc)
                    continue
                state.update(ckpt.model)
        self.params = {
            name: torch.stack([state[name] for state in states]).to(device).requires_grad_()
            for name in states[0]
        }  # every parameter (K, ...)
        self.optimizer = EnsembleOptimizer([s.optimizer for s in specs], list(self.params.values()))
        for row, ckpt in enumerate(checkpoints):
            if ckpt is not None and self.members[row].exception is None:
                self.optimizer.load_member_state_dict(row, ckpt.optimizer)
        self._hyper_key: tuple[float, ...] = ()
        self._layout: list[tuple[Tensor | None, Tensor, Tensor, Tensor]] | None = None
        self.computed_examples: list[int] = []  # per row: the padded batch it computed last step
        self._drop([m for m in self.members if m.result is not None])

    def train(self, should_stop: Callable[[int], bool] | None, indices: Sequence[int]) -> list[RunResult]:
        """Runs every member to its end, stop or failure; should_stop gets indices[k] for member k.

        Checkpoints are written by a background thread; every one is written, and its failure
        taken into the member's result, before this returns or raises."""
        self.writer = CheckpointWriter(PENDING_CHECKPOINTS)
        try:
            self._train(should_stop, indices)
        finally:
            self.writer.close()
            self._take_write_failures()
        return [m.result for m in self.members_by_index]  # type: ignore[misc]

    def _train(self, should_stop: Callable[[int], bool] | None, indices: Sequence[int]) -> None:
        index = {id(m): i for m, i in zip(self.members_by_index, indices)}
        self.evaluate([m for m in self.members if m.needs_eval()])
        while self.members:
            done: list[tuple[_Member, RunResult]] = []
            for member in self.members:
                if member.step == member.total:
                    done.append((member, RunResult(member.step, member.total, final_metrics=member.final_metrics)))
                elif should_stop is not None and should_stop(index[id(member)]):
                    # No evaluation off the eval grid here: a stopped run that is resumed later
                    # must end with exactly the series of an uninterrupted one.
                    result = RunResult(member.step, member.total, stopped=True, final_metrics=member.final_metrics)
                    done.append((member, result))
                elif member.stops_early:
                    early = RunResult(
                        member.step, member.total, final_metrics=member.final_metrics, stopped_early_at_step=member.step
                    )
                    done.append((member, early))
            self._checkpoint(done)
            self._drop([member for member, _ in done])
            if not self.members:
                break
            self.train_step()
            for member in self.members:
                self._guard(member, member.sink.progress, member.step, member.total)
            self.evaluate([m for m in self.members if m.result is None and m.needs_eval()])
            overdue = self.checkpoint_seconds is not None and time.monotonic() - self.checkpointed_at >= self.checkpoint_seconds
            if overdue:
                self.checkpointed_at = time.monotonic()
            self._checkpoint([
                (member, None) for member in self.members
                if member.result is None and member.step < member.total and (overdue or member.spec.checkpoints_at(member.step))
            ])  # fmt: skip
            self._take_write_failures()
            self._drop([m for m in self.members if m.result is not None])

    def _guard(self, member: _Member, fn: Callable[..., Any], *args: Any) -> None:
        """Calls fn; an error (of the member's sink or checkpoint) fails that member alone."""
        if member.result is not None:
            return
        try:
            fn(*args)
        except Exception as exc:
            member.fail(exc)

    def _checkpoint(self, due: Sequence[tuple[_Member, RunResult | None]]) -> None:
        """Checkpoints these members after their current step and gives each its result (None
        for a member that goes on). Their state leaves the device in one copy for all of them
        (copy_to_host), and the writer thread flushes and saves it; the training thread waits
        only when PENDING_CHECKPOINTS events are already waiting."""
        saving: list[tuple[_Member, Callable[[], None] | None]] = []
        flush_only: list[CheckpointWrite] = []
        states = []
        for member, result in due:
            if member.result is not None:
                continue
            try:
                flush = member.flush_before_checkpoint()
            except Exception as exc:  # its sink failed: as _guard does
                member.fail(exc)
                continue
            member.result = result
            if member.storage is None:
                if flush is not None:
                    flush_only.append(CheckpointWrite(member, flush))
                continue
            row = self.members.index(member)
            opt = member.spec.optimizer
            optimizer = self.optimizer.member_state_dict(row, opt, opt.learning_rate(member.step), member.weight_decay)
            states.append(({name: param.detach()[row] for name, param in self.params.items()}, optimizer))
            saving.append((member, flush))
        copies, ready = copy_to_host(states, self.device)
        writes = [
            CheckpointWrite(member, flush, member.storage, member.checkpoint(model, optimizer), member.spec.keeps_checkpoint_at(member.step))
            for (member, flush), (model, optimizer) in zip(saving, copies)
        ] + flush_only  # fmt: skip
        self.writer.submit(writes, ready)

    def _take_write_failures(self) -> None:
        """A failed background write fails its member (as _guard would have), even one that had
        finished: its result must not claim a checkpoint that does not exist."""
        for member, exc in self.writer.failures():
            assert isinstance(member, _Member)
            if member.exception is None:
                member.fail(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))

    def _drop(self, done: list[_Member]) -> None:
        if not done:
            return
        keep = [row for row, m in enumerate(self.members) if m not in done]
        self.members = [self.members[row] for row in keep]
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.params = {name: param.detach()[rows].requires_grad_() for name, param in self.params.items()}
        self.optimizer.keep(rows, list(self.params.values()))
        self._hyper_key, self._layout = (), None

    def _hyperparameters(self) -> tuple[Tensor, Tensor]:
        """(K,) learning rates and weight decays of this step; sent to the device only on change."""
        lrs = [m.spec.optimizer.learning_rate(m.step + 1) for m in self.members]
        wds = [m.weight_decay for m in self.members]
        if self._hyper_key != (*lrs, *wds):
            self._hyper_key = (*lrs, *wds)
            both = to_device(torch.tensor([lrs, wds], dtype=torch.float64), self.device)
            self._lr, self._wd = both[0], both[1]
        return self._lr, self._wd

    def _batch_layout(self) -> list[tuple[Tensor | None, Tensor, Tensor, Tensor]]:
        """Per size class: (its rows or None for all, example indices (Kc, B), targets (Kc, B),
        loss weights (Kc, B)) where padding has weight 0 and a member's examples 1 / its batch."""
        if self._layout is not None:
            return self._layout
        batches = [m.batch_idx() for m in self.members]
        layout = []
        self.computed_examples = [0] * len(self.members)
        for rows in size_classes([len(b) for b in batches]):
            width = max(len(batches[r]) for r in rows)
            idx = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
            weight = torch.zeros(len(rows), width, device=self.device)
            for j, r in enumerate(rows):
                idx[j, : len(batches[r])] = batches[r]
                weight[j, : len(batches[r])] = 1 / len(batches[r])
                self.computed_examples[r] = width
            targets = torch.stack([self.members[r].targets for r in rows]).gather(1, idx)
            every_row = rows == list(range(len(self.members)))
            rows_t = None if every_row else to_device(torch.tensor(rows), self.device)
            layout.append((rows_t, idx, targets, weight))
        if all(m.batch_size == len(m.train_idx) for m in self.members):
            self._layout = layout  # full batch: the same until a phase changes or a member drops
        return layout

    def train_step(self) -> None:
        for row, member in enumerate(self.members):
            phase = member.next_phase()
            if phase != member.phase:
                member.enter_phase(phase)
                if member.spec.phases[phase].reset_optimizer:
                    self.optimizer.reset(row)
                self._layout = None
        lr, wd = self._hyperparameters()
        total = torch.zeros((), device=self.device)
        losses = torch.empty(len(self.members), device=self.device)
        for rows, idx, targets, weight in self._batch_layout():
            params = self.params if rows is None else {n: p[rows] for n, p in self.params.items()}
            logits = self.logits_fn(params, self.tokens[idx, 0], self.tokens[idx, 1])  # (Kc, B, vocab)
            member_loss = (per_example_loss(logits, targets, self.loss_kind) * weight).sum(dim=1)  # (Kc,)
            total = total + member_loss.sum()
            if rows is None:
                losses = member_loss.detach()
            else:
                losses[rows] = member_loss.detach()
        # This forward sees the model after `step` steps: its loss is that step's train_loss.
        for row, member in enumerate(self.members):
            if member.logs_train_loss():
                member.pending_losses.append((member.step, losses[row]))
        for param in self.params.values():
            param.grad = None
        total.backward()  # members share no parameters: each gets its own loss's gradient
        self.optimizer.step(lr, wd)
        for member in self.members:
            member.step += 1

    def evaluate(self, members: list[_Member]) -> None:
        if not members:
            return
        rows = [self.members.index(m) for m in members]
        rows_t = torch.tensor(rows, device=self.device)
        params = {name: param.detach()[rows_t] for name, param in self.params.items()}
        metrics = evaluate(
            self.eval_logits_fn, params, self.tokens, torch.stack([m.targets for m in members]),
            self.labels, [m.train_idx_dev for m in members],
            [m.test_idx for m in members], self.loss_kind,
            self.fourier, [m.spec.resolved_progress_measures for m in members],
        )  # fmt: skip
        for member, values in zip(members, metrics):
            self._guard(member, member.log_eval, values)
