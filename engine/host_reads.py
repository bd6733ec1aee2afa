"""Counting host reads: the places where the host waits for a device tensor's data.

On CUDA every such read is a host-device synchronisation: the host stops queueing kernels until
the GPU has caught up with everything queued so far, so the GPU idles while the host works. The
training loop should make none per step, and an evaluation one (its metrics to the host).

`HostReads` is a context manager that counts them, for tensors on any device but the CPU:

- a value read: item(), float(), int(), bool(), a tensor used as an index (aten._local_scalar_dense),
  torch.equal (and what is built on them, e.g. torch.allclose);
- a device-to-host copy: cpu(), tolist(), to("cpu"), copy_ into a host tensor;
- an op whose output shape depends on the data (the host needs the size to allocate): nonzero,
  masked_select, boolean-mask indexing and index_put, unique, bincount, repeat_interleave
  without output_size;
- a host-to-device copy that makes the host wait: torch.tensor / torch.as_tensor of host data
  with a device, or a copy without non_blocking=True (on CUDA also one from unpinned memory,
  which is staged synchronously).

It is a TorchDispatchMode, which sees every aten op, plus a wrapper of torch.tensor and
torch.as_tensor while it is active (their host-to-device copy happens below the dispatcher). On
the `meta` device, which has shapes but no data, a read returns a placeholder (0, False, zeros,
an empty result) so that the code runs on and every read in it is counted: host reads are a
property of the code path, not of the values. On a real device the op runs as usual and is counted.

Each read is recorded with the qualified names of the functions on the stack outside torch
(`Ensemble.train_step`, `evaluate`, ...), so that a test or benchmark can count the reads made
within one function. torch only: usable by tests and benchmarks alike. The mode is per thread;
the torch.tensor wrapper is process-wide while active.

Not counted: explicit synchronisation (torch.cuda.synchronize, Event.synchronize), which is no
op, and storage-level copies below the dispatcher, such as torch.save of device tensors.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# allclose reads inside its own kernel, where this mode does not see it
_VALUE_READS = {aten._local_scalar_dense.default, aten.equal.default, aten.allclose.default}
_DATA_DEPENDENT_SHAPES = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten._unique.default,
    aten._unique2.default,
    aten.bincount.default,
}
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_TORCH_DIR = torch.__file__.rsplit("/", 1)[0]


@dataclass(frozen=True)
class HostRead:
    kind: str  # "value", "to host", "data-dependent shape", "blocking host-to-device"
    op: str  # the aten op or torch function
    stack: tuple[str, ...]  # qualified names of the calling functions outside torch, innermost first
    site: str  # file:line of the innermost caller outside torch and this module


def _on_device(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu"


def _is_bool(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dtype in (torch.bool, torch.uint8)


def _blocking_upload(source: torch.Tensor, target: torch.device, non_blocking: bool) -> bool:
    """A host-to-device copy the host waits for: on CUDA unless non_blocking from pinned memory;
    elsewhere (meta) unless non_blocking, the code's stated intent (engine.train.to_device pins on CUDA)."""
    if not non_blocking:
        return True
    return target.type == "cuda" and not source.is_pinned()


class HostReads(TorchDispatchMode):
    """with HostReads() as reads: ... then reads.count, reads.within("Ensemble.train_step"), reads.summary()."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[HostRead] = []
        self._saved: dict[str, Any] = {}

    @property
    def count(self) -> int:
        return len(self.reads)

    def within(self, qualname: str) -> int:
        """Reads made while `qualname` (a function's __qualname__, e.g. "Ensemble.evaluate") was on the stack."""
        return sum(qualname in read.stack for read in self.reads)

    def summary(self) -> Counter[tuple[str, str, str]]:
        """(kind, op, site) -> how many times."""
        return Counter((read.kind, read.op, read.site) for read in self.reads)

    def _record(self, kind: str, op: str) -> None:
        stack, site = [], ""
        frame = sys._getframe(1)
        while frame is not None:
            filename = frame.f_code.co_filename
            # torch's own frames, this module's and other dispatch modes' (an op counter around this one)
            mine = filename.startswith(_TORCH_DIR) or filename == __file__ or frame.f_code.co_name == "__torch_dispatch__"
            if not mine:
                stack.append(frame.f_code.co_qualname)
                site = site or f"{filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
            frame = frame.f_back
        self.reads.append(HostRead(kind, op, tuple(stack), site))

    def __enter__(self) -> HostReads:
        self._saved = {"tensor": torch.tensor, "as_tensor": torch.as_tensor}
        torch.tensor = self._wrap_factory(self._saved["tensor"], "torch.tensor")
        torch.as_tensor = self._wrap_factory(self._saved["as_tensor"], "torch.as_tensor")
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.tensor, torch.as_tensor = self._saved["tensor"], self._saved["as_tensor"]
        super().__exit__(*exc)

    def _wrap_factory(self, factory: Any, name: str) -> Any:
        def create(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            device = kwargs.get("device")
            # A tensor argument's copy goes through the dispatcher (counted there); host data does not.
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, torch.Tensor):
                self._record("blocking host-to-device", name)
            return factory(data, *args, **kwargs)

        return create

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        meta = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
        if func in _VALUE_READS and any(_on_device(a) for a in args):
            self._record("value", str(func))
            if meta:
                if func in (aten.equal.default, aten.allclose.default):
                    return True
                return {torch.bool: False}.get(args[0].dtype, 0.0 if args[0].is_floating_point() else 0)
        elif func in _DATA_DEPENDENT_SHAPES and _on_device(args[0]):
            self._record("data-dependent shape", str(func))
            if meta and func is aten.nonzero.default:
                return torch.empty(0, args[0].dim(), dtype=torch.long, device="meta")
            if meta and func is aten.masked_select.default:
                return args[0].new_empty(0)
        elif func in _BOOL_INDEXED and _on_device(args[0]) and any(_is_bool(i) for i in args[1] if i is not None):
            self._record("data-dependent shape", str(func))
            if meta:  # as if every mask were all False: empty long indices give the result's shape
                empty = torch.empty(0, dtype=torch.long, device="meta")
                indices = [[empty] * i.dim() if _is_bool(i) else [i] for i in args[1]]
                args = (args[0], [j for group in indices for j in group], *args[2:])
        elif func is aten._to_copy.default:
            source, target = args[0], kwargs.get("device")
            if target is not None and source.device.type != target.type:
                if target.type == "cpu":
                    self._record("to host", str(func))
                    if source.device.type == "meta":
                        return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
                elif source.device.type == "cpu" and _blocking_upload(source, target, kwargs.get("non_blocking", False)):
                    self._record("blocking host-to-device", str(func))
        elif func is aten.copy_.default:
            target, source = args[0], args[1]
            if target.device.type == "cpu" and _on_device(source):
                self._record("to host", str(func))
                if source.device.type == "meta":
                    return target
            elif _on_device(target) and source.device.type == "cpu":
                non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
                if _blocking_upload(source, target.device, non_blocking):
                    self._record("blocking host-to-device", str(func))
        elif func is aten.repeat_interleave.Tensor and _on_device(args[0]) and kwargs.get("output_size") is None:
            self._record("data-dependent shape", str(func))
        return func(*args, **kwargs)


def cuda_syncs(fn: Callable[[], object]) -> int:
    """How many host-device synchronisations torch's own sync debug mode reports while fn runs on
    a CUDA device: the same property as HostReads, read by the CUDA runtime instead of counted by
    op (the check of HostReads' claims on a real GPU)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
