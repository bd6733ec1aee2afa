"""Counts the aten ops a piece of code runs and the bytes they touch: on a GPU each op that is not a
pure view is about one kernel launch, so the count says how launch-bound a step is, and the bytes
how much memory traffic it needs. Counted on the CPU, where it is cheap; the same code issues the
same ops on CUDA.

    with OpCounter() as counter:
        ensemble.train_step()
    counter.ops, counter.bytes, counter.by_name
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that only make a new view of memory or read metadata: no kernel runs on the device.
VIEW_OPS = frozenset(
    {
        "view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "expand", "expand_as", "slice",
        "select", "t", "transpose", "permute", "unsqueeze", "squeeze", "as_strided", "detach", "alias",
        "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "split",
        "split_with_sizes", "unbind", "chunk", "narrow", "unflatten", "flatten", "diagonal", "resolve_conj",
        "resolve_neg", "is_same_size", "_has_compatible_shallow_copy_type", "set_", "sym_size", "sym_stride",
        "sym_numel", "sym_storage_offset", "dim", "is_contiguous", "promote_types",
    }
)  # fmt: skip


def _tensor_bytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class OpCounter(TorchDispatchMode):
    """ops: the ops that run a kernel; bytes: the sizes of their tensor inputs and outputs summed
    (an in-place op's tensor counts as read and written), an estimate of the memory traffic that
    ignores caches and fusion inside an op; by_name: ops per aten op name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.bytes = 0
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.ops += 1
            self.by_name[name] += 1
            self.bytes += _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
        return out
