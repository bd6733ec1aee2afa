"""Training checkpoints: everything a run needs to continue exactly where it stopped, and where
they are kept (a folder here; the server passes its own CheckpointStorage)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Checkpoint:
    step: int  # optimizer steps taken
    phase: int  # index of the phase that produced the model at `step`
    train_idx: Tensor  # (D,) that phase's training-set indices, on the CPU
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    batch_rng: Tensor  # torch.Generator.get_state() of the minibatch sampler
    data_key: str  # JSON of the task and model specs: a checkpoint only resumes the same setup
    stop_held_since: list[int | None] = field(default_factory=list)  # engine.early_stop's state


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> Path:
    """Writes directory/checkpoint.pt atomically: a crash leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(
        {
            "step": ckpt.step,
            "phase": ckpt.phase,
            "train_idx": ckpt.train_idx.cpu(),
            "model": ckpt.model,
            "optimizer": ckpt.optimizer,
            "batch_rng": ckpt.batch_rng,
            "data_key": ckpt.data_key,
            "stop_held_since": ckpt.stop_held_since,
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> Checkpoint | None:
    """The checkpoint in `directory`, or None when there is none yet."""
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    data = torch.load(path, map_location=device, weights_only=True)
    data["train_idx"] = data["train_idx"].cpu()
    data["batch_rng"] = data["batch_rng"].cpu()
    return Checkpoint(**data)


class CheckpointStorage(Protocol):
    """Where one run's checkpoints go: the latest is what `load` returns."""

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        """Store `ckpt` as the latest; `keep` also keeps it once later ones replace it."""
        ...

    def load(self) -> Checkpoint | None: ...


class CheckpointFolder:
    """A run's checkpoints in a folder: checkpoint.pt is the latest, checkpoint-<step>.pt kept ones."""

    def __init__(self, directory: Path):
        self.directory = directory

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        path = save_checkpoint(self.directory, ckpt)
        if keep:
            kept = self.directory / f"checkpoint-{ckpt.step}.pt"
            tmp = kept.with_suffix(".pt.tmp")
            os.link(path, tmp)
            os.replace(tmp, kept)

    def load(self) -> Checkpoint | None:
        return load_checkpoint(self.directory)


def as_storage(checkpoint: CheckpointStorage | Path | None) -> CheckpointStorage | None:
    """A folder path stands for a CheckpointFolder."""
    return CheckpointFolder(checkpoint) if isinstance(checkpoint, Path) else checkpoint


def start_from_parent(parent: CheckpointStorage, child: CheckpointStorage, copy_series: Callable[[], None] | None = None) -> bool:
    """Start a forked run from its parent's final state, unless it has a checkpoint of its own
    (it is resuming): `copy_series` first, then the parent's checkpoint, so a start that fails
    half-way is simply done again (series writes are upserts; a checkpoint is saved atomically).
    True when the child was started from its parent."""
    if child.load() is not None:
        return False
    ckpt = parent.load()
    if ckpt is None:
        raise FileNotFoundError("the parent run has no checkpoint to start from")
    if copy_series is not None:
        copy_series()
    child.save(ckpt)
    return True


def copy_to_host(trees: Any, device: torch.device) -> tuple[Any, Callable[[], None]]:
    """`trees` (nested dicts, lists and tuples) with every tensor on `device` replaced by a host
    copy, made by one device-to-host transfer per dtype instead of one per tensor: each transfer
    waits for the device's queue to drain, and an ensemble's checkpoint holds hundreds of tensors.

    Returns the copied trees and a `wait` to call before reading them: on CUDA the copy goes to
    pinned memory without blocking the caller. The copies are views into one buffer (a
    CheckpointWriter clones them apart before a save, else torch.save would write the whole buffer);
    tensors elsewhere, such as CPU ones of a CUDA ensemble, are kept as they are.
    """
    leaves: dict[torch.dtype, list[Tensor]] = {}

    def collect(tree: Any) -> None:
        if isinstance(tree, Tensor):
            # By type: torch.device("cuda") != torch.device("cuda:0"), the device of its tensors.
            if tree.device.type == device.type and device.index in (None, tree.device.index):
                leaves.setdefault(tree.dtype, []).append(tree)
        elif isinstance(tree, dict):
            for item in tree.values():
                collect(item)
        elif isinstance(tree, (list, tuple)):
            for item in tree:
                collect(item)

    collect(trees)
    copies: dict[int, Tensor] = {}
    event = None
    for group in leaves.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])  # a copy even on the CPU
        if device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
        else:
            host = flat.cpu()
        for t, part in zip(group, host.split([t.numel() for t in group])):
            copies[id(t)] = part.view(t.shape)
    if device.type == "cuda" and leaves:
        event = torch.cuda.Event()
        event.record()

    def replace(tree: Any) -> Any:
        if isinstance(tree, Tensor):
            return copies.get(id(tree), tree)
        if isinstance(tree, dict):
            return {key: replace(item) for key, item in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(replace(item) for item in tree)
        return tree

    return replace(trees), (event.synchronize if event is not None else lambda: None)


def _compact(tree: Any) -> Any:
    """Each tensor with a storage of its own: a view into copy_to_host's buffer would save it all."""
    if isinstance(tree, Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {key: _compact(item) for key, item in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_compact(item) for item in tree)
    return tree


@dataclass
class CheckpointWrite:
    """One member's part of a checkpoint event: first `flush` (its sink's, making the points
    logged before the checkpoint durable), then `storage.save(checkpoint, keep)`; either may be None."""

    owner: Hashable  # whose failure it is when a step fails
    flush: Callable[[], None] | None = None
    storage: CheckpointStorage | None = None
    checkpoint: Checkpoint | None = None
    keep: bool = False


class CheckpointWriter:
    """Writes checkpoints on a background thread, in the order they were submitted, so training
    goes on while a store takes its time; `submit` waits only while `max_pending` checkpoint
    events already wait besides the one being written.

    A failed write is kept for `failures()` and skips the owner's later writes (a later checkpoint
    must not land after a lost one: its points or its predecessor may be missing). `close` writes
    everything submitted and ends the thread; it is called however training ends.
    """

    def __init__(self, max_pending: int = 2):
        self._queue: queue.Queue[tuple[list[CheckpointWrite], Callable[[], None]] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failures: list[tuple[Hashable, BaseException]] = []
        self._failed: set[Hashable] = set()

    def submit(self, writes: list[CheckpointWrite], ready: Callable[[], None] = lambda: None) -> None:
        """Queue one checkpoint event's writes; `ready()` is waited on (in the writer) before them."""
        if not writes:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
            self._thread.start()
        self._queue.put((writes, ready))

    def failures(self) -> list[tuple[Hashable, BaseException]]:
        """The failures since the last call, as (owner, exception)."""
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            writes, ready = event
            try:
                ready()
            except BaseException as exc:  # the copy itself failed: every write of the event is lost
                for write in writes:
                    self._fail(write.owner, exc)
                continue
            for write in writes:
                if write.owner in self._failed:
                    continue
                try:
                    if write.flush is not None:
                        write.flush()
                    if write.storage is not None and write.checkpoint is not None:
                        ckpt = write.checkpoint
                        ckpt.model, ckpt.optimizer = _compact(ckpt.model), _compact(ckpt.optimizer)
                        write.storage.save(ckpt, keep=write.keep)
                except BaseException as exc:  # kept for the training thread, which fails the member
                    self._fail(write.owner, exc)

    def _fail(self, owner: Hashable, exc: BaseException) -> None:
        with self._lock:
            if owner not in self._failed:
                self._failed.add(owner)
                self._failures.append((owner, exc))
