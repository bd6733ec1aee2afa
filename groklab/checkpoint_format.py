"""A run's training checkpoints in the checkpoint store, as safetensors files.

One file holds everything a run resumes from: the model's tensors (`model.<name>`, the names of
the engine's `state_dict()`), the AdamW state (`optimizer.*`, its nesting in the metadata), the
training-set indices and the minibatch sampler's state. safetensors because it is the format an
interpretability user loads anywhere, and because the api can cut the model's weights out of it
with numpy alone, so serving a download never imports torch.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from groklab.store.checkpoint_store import CheckpointNotFound, CheckpointStore
from groklab.store.leases import Lease

if TYPE_CHECKING:
    from engine.checkpoint import Checkpoint

FORMAT = "groklab-checkpoint/1"
MODEL_PREFIX = "model."


def encode(ckpt: Checkpoint) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, Any] = {MODEL_PREFIX + name: tensor for name, tensor in ckpt.model.items()}
    tensors["train_idx"] = ckpt.train_idx
    tensors["batch_rng"] = ckpt.batch_rng
    optimizer = _flatten(ckpt.optimizer, "optimizer", tensors)
    metadata = {
        "format": FORMAT, "step": str(ckpt.step), "phase": str(ckpt.phase),
        "data_key": ckpt.data_key, "optimizer": json.dumps(optimizer),
        "stop_held_since": json.dumps(ckpt.stop_held_since),
    }  # fmt: skip
    # Rows of the ensemble's stacked parameters: safetensors wants each tensor on its own.
    return save({name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}, metadata)


def decode(data: bytes) -> Checkpoint:
    from safetensors.torch import load

    from engine.checkpoint import Checkpoint

    metadata = read_metadata(data)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a groklab checkpoint (format {metadata.get('format')!r})")
    tensors = load(data)
    return Checkpoint(
        step=int(metadata["step"]),
        phase=int(metadata["phase"]),
        train_idx=tensors["train_idx"],
        model={name[len(MODEL_PREFIX) :]: t for name, t in tensors.items() if name.startswith(MODEL_PREFIX)},
        optimizer=_unflatten(json.loads(metadata["optimizer"]), tensors),
        batch_rng=tensors["batch_rng"],
        data_key=metadata["data_key"],
        stop_held_since=json.loads(metadata.get("stop_held_since", "[]")),
    )


def model_weights(data: bytes) -> bytes:
    """The model's tensors alone, under the engine's state_dict names, as a safetensors file."""
    from safetensors.numpy import load, save

    metadata = read_metadata(data)
    weights = {name[len(MODEL_PREFIX) :]: a for name, a in load(data).items() if name.startswith(MODEL_PREFIX)}
    # One metadata entry: safetensors writes its metadata map in no fixed order, and a download
    # must be the same bytes each time (its ETag is the stored checkpoint's SHA-256).
    return save(weights, {"step": metadata["step"]})


def read_metadata(data: bytes) -> dict[str, str]:
    # A safetensors file starts with the length of its JSON header (u64, little-endian), then the
    # header, whose "__metadata__" holds the string pairs given at save.
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def _flatten(value: Any, path: str, tensors: dict[str, Any]) -> Any:
    """A JSON skeleton of nested dicts and lists whose tensors move into `tensors` by path."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[key, _flatten(item, f"{path}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(item, f"{path}.{i}", tensors) for i, item in enumerate(value)]}
    return {"value": value}


def _unflatten(skeleton: dict[str, Any], tensors: dict[str, Any]) -> Any:
    if "tensor" in skeleton:
        return tensors[skeleton["tensor"]]
    if "dict" in skeleton:
        return {key: _unflatten(item, tensors) for key, item in skeleton["dict"]}
    if "list" in skeleton:
        return [_unflatten(item, tensors) for item in skeleton["list"]]
    return skeleton["value"]


class RunCheckpoints:
    """The engine's checkpoint storage for one run, backed by the checkpoint store.

    Reads need no lease (a fork reads its parent's); writes go under the worker's lease, so a
    worker that was fenced off writes nothing. After each write only the latest checkpoint and
    the kept ones remain.
    """

    def __init__(self, store: CheckpointStore, run_id: int, lease: Lease | None = None):
        self.store, self.run_id, self.lease = store, run_id, lease

    def load(self) -> Checkpoint | None:
        try:
            _, data = self.store.get(self.run_id)
        except CheckpointNotFound:
            return None
        return decode(data)

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        if self.lease is None:
            raise RuntimeError(f"run {self.run_id}: checkpoints are written under a lease")
        self.store.put(self.lease, ckpt.step, encode(ckpt), keep=keep)
        self.store.prune(self.run_id, keep_latest=1)
