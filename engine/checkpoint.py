"""Training checkpoints: everything a run needs to continue exactly where it stopped, and where
they are kept (a folder here; the server passes its own CheckpointStorage)."""

from __future__ import annotations

import os
from collections.abc import Callable
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


def start_from_parent(
    parent: CheckpointStorage, child: CheckpointStorage, copy_series: Callable[[], None] | None = None
) -> bool:
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
