"""Training checkpoints: everything a run needs to continue exactly where it stopped."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def start_from_parent(parent_dir: Path, child_dir: Path, copy_series: Callable[[], None] | None = None) -> bool:
    """Start a forked run from its parent's final state, unless it has a checkpoint of its own
    (it is resuming): `copy_series` first, then the parent's checkpoint, atomically, so a start
    that fails half-way is simply done again. True when the child was started from its parent."""
    path = child_dir / CHECKPOINT_NAME
    if path.exists():
        return False
    if copy_series is not None:
        copy_series()
    child_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.parent")
    shutil.copyfile(parent_dir / CHECKPOINT_NAME, tmp)
    os.replace(tmp, path)
    return True
