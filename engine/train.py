"""The training loop: K runs of one model shape trained as one batched computation (an ensemble),
each phase by phase with its own step counter, reporting every metric to its own sink. A lone run
is an ensemble of one."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.checkpoint import Checkpoint, CheckpointStorage, CheckpointWrite, CheckpointWriter, as_storage, copy_to_host
from engine.memory import members_that_fit
from engine.evaluation import Loss, evaluation_table, metric_names, pair_logits_fn, per_example_loss, table_rows, to_host
from engine.model import build_model, mlp_logits, transformer_logits
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
LOSS_RING_SLOTS = 1024  # steps of train losses kept on the device between two reads by the host
# A row with gathered parameters (batch_plan) copies every parameter of its member, forward and
# backward: worth about as many examples of computation as parameters / this (P=113: ~440).
ROW_COST_PARAMETERS_PER_EXAMPLE = 512
# One more forward + backward pass (batch_plan), in examples: ~100 kernel launches of ~5 us cost a
# GPU the time of ~10^5 examples; the CPU launches nothing.
PASS_COST_EXAMPLES = {"cpu": 0, "cuda": 100_000}


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
    # non_blocking states the intent on other devices too: engine.host_reads counts a blocking
    # upload to the meta device, which stands in for CUDA in the host-read tests.
    return tensor.to(device, non_blocking=True)


def chunk_width(sizes: Sequence[int], row_cost: float) -> int:
    """The best width of rows to cut members' training examples into: each member fills
    ceil(size / width) rows; minimises the examples computed (padding included) plus row_cost
    (in examples) per row. Ties: the widest, the fewest rows."""
    widths = sorted({math.ceil(n / j) for n in sizes for j in range(1, 9)}, reverse=True)
    return min(widths, key=lambda w: sum(math.ceil(n / w) * (w + row_cost) for n in sizes))


def batch_plan(sizes: Sequence[int], row_cost: float, pass_cost: float) -> list[tuple[list[int], int]]:
    """How one step computes members of these batch sizes: forward passes, each (its members,
    its row width). Members whose sizes are within 2x (one size class) share one pass, one row
    each, padded to the largest. Otherwise the cheapest of: that one padded pass; a pass per size
    class; one pass over rows of chunk_width. Costs are in examples computed: padding included,
    row_cost per row whose parameters are gathered (a member's own rows are not), pass_cost per
    pass (kernel launches: ~100 per pass, nothing on the CPU, the most on a GPU)."""
    every = list(range(len(sizes)))
    classes = size_classes(sizes)
    if len(classes) == 1:
        return [(every, max(sizes))]
    width = chunk_width(sizes, row_cost)
    options = [
        (len(sizes) * max(sizes) + pass_cost, [(every, max(sizes))]),
        (
            sum(len(c) * (max(sizes[k] for k in c) + row_cost) + pass_cost for c in classes),
            [(c, max(sizes[k] for k in c)) for c in classes],
        ),
        (sum(math.ceil(n / width) * (width + row_cost) for n in sizes) + pass_cost, [(every, width)]),
    ]
    return min(options, key=lambda option: option[0])[1]


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
    ensemble = Ensemble([spec], [sink], [as_storage(checkpoint)], resolve_device(device or spec.device), checkpoint_seconds)
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
    capture: bool = False,
) -> list[RunResult]:
    """Trains specs[k] into sinks[k] (checkpointing to checkpoints[k]) exactly as train_run
    would, with specs of one pack_key batched together; results in the order of specs.

    should_stop(k) is polled between member k's steps: a stopped member is checkpointed and drops
    out, the others go on. A member whose sink or checkpoint fails drops out with the error in its
    RunResult. Members may resume at different steps and have different phase schedules. A group
    larger than the device's free memory holds (or memory_bytes, when given: engine.memory) trains
    in consecutive chunks that each fit. checkpoint_seconds: as in train_run. capture: replay
    each step as a CUDA graph on a CUDA device (Ensemble), the eager step elsewhere.
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
                checkpoint_seconds, capture=capture,
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
        self.pairs = len(data.targets)
        self.test_mask = self._mask(data.test_idx)  # (N,) bool on the device: the test set, every phase
        self.batch_rng = torch.Generator().manual_seed(derived_seed(spec.seed, BATCH_STREAM))
        self.step, self.phase = 0, 0
        self.set_train_idx(data.train_idx)
        self.final_metrics: dict[str, float] = {}
        self.last_eval_step = -1
        # (step, slot of loss_ring): logged at the next sync, not per step. The Ensemble sets the ring
        # and this member's column of it.
        self.pending_losses: list[tuple[int, int]] = []
        self.loss_ring: Tensor | None = None
        self.ring_column = 0
        self.result: RunResult | None = None
        self.exception: Exception | None = None
        self.early_stop = EarlyStop(spec.stop_when)
        self.stops_early = False  # a stop_when condition held long enough at the last evaluation

    def set_train_idx(self, idx: Tensor) -> None:
        self.train_idx = idx.cpu()  # checkpointed and subsetted on the host
        self.train_idx_dev = to_device(self.train_idx, self.device)
        self.train_mask = self._mask(self.train_idx)  # (N,) bool on the device, for evaluation

    def _mask(self, idx: Tensor) -> Tensor:
        """Host indices -> a (N,) bool mask on the device, built on the host: a phase change inside
        the step loop copies it without waiting for the device."""
        mask = torch.zeros(self.pairs, dtype=torch.bool)
        mask[idx] = True
        return to_device(mask, self.device)

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

    def pending_loss_values(self) -> Tensor:
        """The pending train losses, in order, gathered from the ring on the device (nothing read)."""
        assert self.loss_ring is not None
        slots = to_device(torch.tensor([slot for _, slot in self.pending_losses]), self.loss_ring.device)
        return self.loss_ring[slots, self.ring_column]

    def log_pending_losses(self) -> None:
        """Logs the train losses since the last evaluation, with one host read (at a checkpoint, or
        when the ring is full; an evaluation reads them with its own metrics: Ensemble.evaluate)."""
        if self.pending_losses and self.loss_ring is not None:
            self.log_losses(self.pending_loss_values().tolist())

    def log_losses(self, losses: Sequence[float]) -> None:
        """Logs the pending train losses, read to the host as `losses` (in their order)."""
        steps = [step for step, _ in self.pending_losses]
        self.pending_losses = []
        for step, loss in zip(steps, losses):
            self.sink.log(step, {"train_loss": loss})

    def log_eval(self, metrics: dict[str, float], pending_losses: Sequence[float]) -> None:
        """Logs an evaluation's metrics, after the pending train losses (read with them)."""
        self.log_losses(pending_losses)
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
        self.result = RunResult(self.step, self.total, final_metrics=self.final_metrics, error=f"{type(exc).__name__}: {exc}")


@dataclass
class _Rows:
    """One forward pass's batch as static tensors: R rows of `width` examples."""

    a: Tensor  # (R, width) operands
    b: Tensor
    targets: Tensor  # (R, width)
    weight: Tensor  # (R, width): 1 / the member's batch size, 0 for padding
    row_member: Tensor | None  # (R,) the member (row of the parameters) of each row; None: row r is member r
    ones: Tensor  # (R,) the gradient of the summed loss with respect to each row's


@dataclass
class _Layout:
    """One step's batch (batch_plan): its passes, and which member each of their rows is."""

    passes: list[_Rows]
    member_rows: Tensor | None  # (K, rows of all passes) 1 where the row is member k's; None: row k is member k


class Ensemble:
    """K members' parameters stacked along a leading dimension, their optimizer and the step loop.

    Row r of every parameter belongs to self.members[r]; a member that finishes, stops or fails
    drops out and the rows are compacted. All parameters are views of one (K, N) buffer, self.flat.

    capture: on a CUDA device, each step after the first of a batch layout replays a CUDA graph of
    the step (forward, backward, optimizer): one launch instead of ~100 kernels. The layout changes
    with phases, dropping members and every minibatch step; those steps (and any device but CUDA)
    run eagerly.

    pass_cost: the cost of one more forward pass, in examples (batch_plan); None: the device's
    (PASS_COST_EXAMPLES). Counting a GPU's kernels on the CPU takes the GPU's.
    """

    def __init__(
        self,
        specs: Sequence[RunSpec],
        sinks: Sequence[MetricSink],
        storages: Sequence[CheckpointStorage | None],
        device: torch.device,
        checkpoint_seconds: float | None = None,
        capture: bool = False,
        pass_cost: float | None = None,
    ):
        self.device = device
        self.capture = capture and device.type == "cuda"
        self._graph: tuple[_Layout, Any, Tensor] | None = None  # the layout, its CUDA graph and losses
        self._warm: _Layout | None = None  # the layout whose first step ran eagerly (before capture)
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpointed_at = time.monotonic()  # the members' last checkpoint (all are written together)
        self.loss_kind = Loss.of(specs[0])  # one per pack (engine.packing), as is the precision
        self.compute_dtype = torch.bfloat16 if specs[0].precision == "bf16-mixed" else None
        transformer = isinstance(specs[0].model, TransformerSpec)
        self.logits_fn = transformer_logits if transformer else mlp_logits
        table = build_task(specs[0].task)  # one task table: the pairs and true labels are shared
        self.eval_logits = pair_logits_fn(self.logits_fn, table.tokens, table.vocab_size, device)  # over all pairs
        self.tokens = table.tokens.to(device)  # (N, 3)
        self.fourier = FourierBasis.of(specs[0].task, device) if any(s.resolved_progress_measures for s in specs) else None
        self.labels = table.labels.to(device)  # (N,)
        self.members = [_Member(spec, sink, d, device) for spec, sink, d in zip(specs, sinks, storages)]
        self.members_by_index = list(self.members)
        states = [build_model(spec).state_dict() for spec in specs]
        weight_norms = self._weight_norms(specs, states)  # from the initial weights, before a checkpoint's
        checkpoints = [None if d is None else d.load() for d in storages]
        for member, state, ckpt in zip(self.members, states, checkpoints):
            if ckpt is not None:
                try:
                    member.load(ckpt)
                except EngineError as exc:
                    member.fail(exc)
                    continue
                state.update(ckpt.model)
        self.shapes = {name: tuple(value.shape) for name, value in states[0].items()}
        self.flat = torch.stack([torch.cat([value.flatten() for value in state.values()]) for state in states]).to(device)
        self.params = self._views(self.flat)  # every parameter (K, ...), a view of flat
        self.optimizer = EnsembleOptimizer(
            [s.optimizer for s in specs], list(self.params.values()), self.flat, [s.grad_filter for s in specs], weight_norms,
            names=list(self.params),
        )  # fmt: skip
        self.row_cost = self.flat.shape[1] / ROW_COST_PARAMETERS_PER_EXAMPLE
        self.pass_cost = PASS_COST_EXAMPLES.get(device.type, 0) if pass_cost is None else pass_cost
        self.loss_ring = torch.zeros(LOSS_RING_SLOTS, len(self.members), dtype=self.flat.dtype, device=device)
        self.ring_slot = 0
        for column, member in enumerate(self.members):
            member.loss_ring, member.ring_column = self.loss_ring, column
        self.ring_columns = torch.arange(len(self.members), device=device)  # each row's column of the ring
        for row, ckpt in enumerate(checkpoints):
            if ckpt is not None and self.members[row].exception is None:
                self.optimizer.load_member_state_dict(row, ckpt.optimizer)
        self._hyper_key: tuple[float, ...] = ()
        self._layout: _Layout | None = None
        self.computed_examples = [0] * len(self.members)  # per row: the padded batch it computed last step
        self._drop([m for m in self.members if m.result is not None])

    def _weight_norms(self, specs: Sequence[RunSpec], states: Sequence[dict[str, Tensor]]) -> Tensor | None:
        """(K, 1) each member's total weight norm under Omnigrok's constraint: its initial weights'
        norm, or the one its spec gives; None without the constraint (one per pack: engine.packing)."""
        if specs[0].weight_norm is None:
            return None
        norms = []
        for spec, state in zip(specs, states):
            assert spec.weight_norm is not None
            initial = torch.linalg.vector_norm(torch.cat([value.flatten() for value in state.values()]).double())
            norms.append(spec.weight_norm.value or float(initial))
        dtype = next(iter(states[0].values())).dtype
        return torch.tensor(norms, dtype=torch.float64).to(dtype).view(-1, 1).to(self.device)

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
        rows = to_device(torch.tensor(keep, dtype=torch.long), self.device)  # no wait for the GPU
        self.flat = self.flat[rows]
        self.params = self._views(self.flat)
        self.optimizer.keep(rows, self.flat, list(self.params.values()))
        self.ring_columns = self.ring_columns[rows]
        self._hyper_key, self._layout = (), None

    def _views(self, flat: Tensor) -> dict[str, Tensor]:
        """Each named parameter (R, ...) as a view of its columns of a flat (R, N) buffer."""
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        columns = flat.split(sizes, dim=1)
        return {name: col.view(len(flat), *shape) for (name, shape), col in zip(self.shapes.items(), columns)}

    def _set_hyperparameters(self) -> None:
        """This step's learning rates and weight decays, copied to the optimizer only on change."""
        lrs = [m.spec.optimizer.learning_rate(m.step + 1) for m in self.members]
        wds = [m.weight_decay for m in self.members]
        if self._hyper_key != (*lrs, *wds):
            self._hyper_key = (*lrs, *wds)
            rows = EnsembleOptimizer.hyper_rows(lrs, wds, self.flat.dtype)
            self.optimizer.set_hyperparameters(rows.pin_memory() if self.device.type == "cuda" else rows)

    def _batch_layout(self) -> _Layout:
        """This step's batch (batch_plan): each member's examples in one row padded to its pass's
        widest, or in rows of a chunk width; padding has weight 0, a member's examples 1 / its batch."""
        if self._layout is not None:
            return self._layout
        batches = [m.batch_idx() for m in self.members]
        self.computed_examples = [0] * len(batches)
        passes, row_member = [], []
        for members, width in batch_plan([len(b) for b in batches], self.row_cost, self.pass_cost):
            counts = [math.ceil(len(batches[k]) / width) for k in members]  # rows per member
            idx = torch.zeros(sum(counts), width, dtype=torch.long, device=self.device)
            weight = torch.zeros(sum(counts), width, dtype=self.flat.dtype, device=self.device)
            targets = torch.zeros_like(idx)
            rows: list[int] = []
            for k, count in zip(members, counts):
                start, batch = len(rows), batches[k]
                idx.view(-1)[start * width : start * width + len(batch)] = batch
                weight.view(-1)[start * width : start * width + len(batch)] = 1 / len(batch)
                targets[start : start + count] = self.members[k].targets[idx[start : start + count]]
                rows += [k] * count
                self.computed_examples[k] = count * width
            tokens = self.tokens[idx]  # (R, width, 3)
            own = rows == list(range(len(self.members)))
            rows_t = None if own else to_device(torch.tensor(rows), self.device)
            ones = torch.ones(len(rows), dtype=self.flat.dtype, device=self.device)
            passes.append(_Rows(tokens[..., 0], tokens[..., 1], targets, weight, rows_t, ones))
            row_member += rows
        member_rows = None
        if row_member != list(range(len(self.members))):
            member_rows = torch.zeros(len(batches), len(row_member), dtype=self.flat.dtype)
            member_rows[row_member, range(len(row_member))] = 1
            member_rows = to_device(member_rows, self.device)
        layout = _Layout(passes, member_rows)
        if all(m.batch_size == len(m.train_idx) for m in self.members):
            self._layout = layout  # full batch: the same until a phase changes or a member drops
        return layout

    def _row_loss(self, flat: Tensor, rows: _Rows) -> Tensor:
        """Each row's training loss (R,): its examples' losses weighted (one small bmm) and summed."""
        params = flat if rows.row_member is None else F.embedding(rows.row_member, flat)
        logits = self.logits_fn(self._views(params), rows.a, rows.b)  # (R, width, vocab)
        losses = per_example_loss(logits, rows.targets, self.loss_kind).to(rows.weight.dtype)  # (R, width), flat's type
        return (losses[:, None] @ rows.weight[:, :, None]).view(-1)

    def _compute_copy(self, flat: Tensor) -> Tensor:
        """The weights the forward and backward run on: flat itself, or (bf16-mixed) its bfloat16
        copy, one cast per step whose backward casts the gradient back to flat's type."""
        return flat if self.compute_dtype is None else flat.to(self.compute_dtype)

    def _total_loss(self, flat: Tensor, layout: _Layout) -> tuple[Tensor, list[Tensor]]:
        weights = self._compute_copy(flat)
        row_losses = [self._row_loss(weights, rows) for rows in layout.passes]
        return sum(loss.sum() for loss in row_losses), [loss.detach() for loss in row_losses]  # type: ignore[return-value]

    def _step_body(self, layout: _Layout, functional: bool = False) -> Tensor:
        """Forward, backward and the optimizer update on static tensors with a fixed set of kernels,
        no host reads and no value-dependent sizes (a CUDA graph captures it). Returns each member's
        loss (K,) of the forward. functional: the gradient by torch.func.grad, which torch.compile
        traces in one graph (Tensor.backward and torch.autograd.grad break it); eager autograd
        otherwise, the faster of the two on the CPU."""
        if functional:
            grad, row_losses = torch.func.grad(self._total_loss, has_aux=True)(self.flat, layout)
        else:
            # Members share no parameters: each gets its own loss's gradient. The gradient of the
            # summed loss, seeded by static ones: no sum and no seed tensor per step.
            leaf = self.flat.detach().requires_grad_()
            weights = self._compute_copy(leaf)
            row_losses = [self._row_loss(weights, rows) for rows in layout.passes]
            (grad,) = torch.autograd.grad(row_losses, leaf, grad_outputs=[rows.ones for rows in layout.passes])
            row_losses = [loss.detach() for loss in row_losses]
        self.optimizer.update(grad)
        row_loss = row_losses[0] if len(row_losses) == 1 else torch.cat(row_losses)
        return row_loss if layout.member_rows is None else layout.member_rows @ row_loss

    def _captured_step(self, layout: _Layout) -> Tensor:
        """The step as a CUDA graph replay; the first step of a layout runs eagerly, as warm-up."""
        if self._graph is not None and self._graph[0] is layout:
            self._graph[1].replay()
            return self._graph[2]
        if self._warm is not layout:
            # Warm-up on a side stream, as CUDA graph capture asks: a real step, not a throwaway one.
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                losses = self._step_body(layout)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            losses.record_stream(torch.cuda.current_stream(self.device))  # read there next
            self._warm, self._graph = layout, None
            return losses
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                losses = self._step_body(layout)
        except RuntimeError as exc:  # an op this torch cannot capture: train on, eagerly
            warnings.warn(f"CUDA graph capture failed, the steps run eagerly: {exc}", stacklevel=2)
            self.capture = False
            return self._step_body(layout)
        self._graph = (layout, graph, losses)
        graph.replay()  # capture records the kernels without running them
        return losses

    def _flush_losses(self) -> None:
        """Logs every pending train loss: the ring is full."""
        for member in self.members:
            self._guard(member, member.log_pending_losses)
        self.ring_slot = 0

    def train_step(self) -> None:
        for row, member in enumerate(self.members):
            phase = member.next_phase()
            if phase != member.phase:
                member.enter_phase(phase)
                if member.spec.phases[phase].reset_optimizer:
                    self.optimizer.reset(row)
                self._layout = None
        self._set_hyperparameters()
        layout = self._batch_layout()
        # A layout rebuilt every step (minibatches) is never replayed: those steps run eagerly.
        captured = self.capture and layout is self._layout
        losses = self._captured_step(layout) if captured else self._step_body(layout)
        self.optimizer.count_step()
        # This forward sees the model after `step` steps: its loss is that step's train_loss.
        logging = [m for m in self.members if m.logs_train_loss()]
        if logging:
            if self.ring_slot == len(self.loss_ring):
                self._flush_losses()
            self.loss_ring[self.ring_slot].index_copy_(0, self.ring_columns, losses)
            for member in logging:
                member.pending_losses.append((member.step, self.ring_slot))
            self.ring_slot += 1
        for member in self.members:
            member.step += 1

    def evaluate(self, members: list[_Member]) -> None:
        """Evaluates these members and logs their metrics and pending train losses, all read to
        the host with one transfer."""
        if not members:
            return
        rows = [self.members.index(m) for m in members]
        if rows == list(range(len(self.members))):
            params = {name: param.detach() for name, param in self.params.items()}
        else:
            rows_t = to_device(torch.tensor(rows), self.device)
            params = {name: param.detach()[rows_t] for name, param in self.params.items()}
        with_progress = [m.spec.resolved_progress_measures for m in members]
        table = evaluation_table(
            self.eval_logits, params, torch.stack([m.targets for m in members]), self.labels,
            torch.stack([m.train_mask for m in members]), torch.stack([m.test_mask for m in members]),
            self.loss_kind, self.fourier, with_progress,
        )  # fmt: skip
        pending = [m.pending_loss_values() for m in members if m.pending_losses]
        flat, losses = to_host([table, torch.cat(pending) if pending else table.new_empty(0)])
        width = table.shape[1]
        by_member = [flat[r * width : (r + 1) * width] for r in range(len(members))]
        at = 0
        for member, metrics in zip(members, table_rows(by_member, metric_names(self.fourier), with_progress)):
            count = len(member.pending_losses)
            self._guard(member, member.log_eval, metrics, losses[at : at + count])
            at += count
