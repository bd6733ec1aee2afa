"""How many ensemble members a device's memory holds: a pack larger than that trains in chunks."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from engine.spec import MlpSpec, RunSpec, TransformerSpec, parameter_count

BYTES_PER_VALUE = 4  # float32
MEMORY_FRACTION = 0.5  # of the memory free when the pack starts: room for evaluation and fragmentation


def member_bytes(spec: RunSpec) -> int:
    """An upper estimate of one member's training memory: each parameter with its gradient, two
    AdamW moments and the methods' state, and the activations autograd keeps for one step over twice its batch (a size
    class pads a member to at most 2x its examples)."""
    model, vocab = spec.model, spec.task.vocab_size
    if isinstance(model, TransformerSpec):
        # MLP pre-activation and hidden, residual stream copies, values and attention, logits
        per_example = 2 * model.d_mlp + 6 * model.d_model + 3 * model.n_heads * model.d_head + 3 * vocab
    elif isinstance(model, MlpSpec):
        per_example = 2 * model.d_hidden + 2 * model.d_embed + 3 * vocab
    else:
        per_example = 0
    batch = spec.optimizer.batch_size or spec.task.resolved_train_size
    batch = min(batch, spec.task.resolved_train_size)
    return BYTES_PER_VALUE * ((4 + method_state_copies(spec)) * parameter_count(spec) + 2 * batch * per_example)


def method_state_copies(spec: RunSpec) -> int:
    """Copies of the parameters that the grokking methods' state adds: Muon's momentum, and
    Grokfast's EMA or window of gradients."""
    copies = 1 if spec.optimizer.kind == "muon" else 0
    if spec.grad_filter is not None:
        copies += 1 if spec.grad_filter.kind == "ema" else spec.grad_filter.window
    return copies


def free_bytes(device: torch.device) -> int:
    """Memory free on the device now: the GPU's own, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def members_that_fit(specs: list[RunSpec], device: torch.device, memory_bytes: int | None = None) -> int:
    """How many of these members (of one pack) train at once within MEMORY_FRACTION of the free
    memory, or of memory_bytes when given; at least one."""
    budget = MEMORY_FRACTION * (free_bytes(device) if memory_bytes is None else memory_bytes)
    return max(1, int(budget // max(member_bytes(spec) for spec in specs)))


# An evaluation's chunk of members may use this much of the device's total memory (training
# takes at most MEMORY_FRACTION of what is free at the start, and evaluations run between steps).
# Of the total, not the free memory: the chunking, and so the exact float results, must not
# change from run to run with what else happens to be allocated.
EVAL_MEMORY_FRACTION = 0.25
# On the CPU a fixed bound near the size of a last-level cache: there batching saves no kernel
# launches, and passes over a chunk larger than the cache run from memory. CPU time of an
# evaluation at K = 8 with progress measures, one thread, by members a chunk (best of 3, a shared
# 2-core host with a 32 MB L3; the estimate below per member in brackets):
#   P = 23 (3.7 MB): 1: 25 ms, 2: 23, 4: 19, 8: 30     P = 31 (7.1 MB): 1: 36, 2: 30, 4: 32, 8: 46
#   P = 47 (18 MB): 1: 67, 4: 104, 8: 110              P = 113 (136 MB, no progress measures):
#   1: 0.52 s, 2: 0.73, 4: 0.64, 8: 0.69
# 16 MiB gives 4, 2, 1 and 1 members a chunk there (and all 16 of the tests' P = 11 ensembles).
EVAL_HOST_BYTES = 1 << 24


def evaluation_bytes_per_member(params: Mapping[str, torch.Tensor], pairs: int) -> int:
    """An upper estimate of one member's evaluation memory over `pairs` pairs, from the shapes of
    its parameters (leading member dimension): per pair, three activations as wide as the widest
    layer (engine.model.transformer_grid_logits' MLP input, its hidden layer and a partial sum)
    and ten logit-sized tensors (the logits, their log-softmax, the metrics' and the progress
    measures' copies)."""
    first = next(iter(params.values()))
    widest = max(param.shape[-1] for param in params.values())
    vocab = params["W_U"].shape[-1]
    return first.element_size() * pairs * (3 * widest + 10 * vocab)


def members_per_evaluation(params: Mapping[str, torch.Tensor], pairs: int, device: torch.device) -> int:
    """How many of the members in `params` one evaluation chunk holds on `device`; at least one."""
    members = next(iter(params.values())).shape[0]
    if device.type == "meta":
        return members  # no memory at all: a meta run counts the ops and reads of one chunk, as on a large GPU
    if device.type == "cuda":
        budget = EVAL_MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory
    else:
        budget = EVAL_HOST_BYTES
    return max(1, min(members, int(budget // evaluation_bytes_per_member(params, pairs))))
