"""How many ensemble members a device's memory holds: a pack larger than that trains in chunks."""

from __future__ import annotations

import os

import torch

from engine.spec import MlpSpec, RunSpec, TransformerSpec, parameter_count

BYTES_PER_VALUE = 4  # float32
MEMORY_FRACTION = 0.5  # of the memory free when the pack starts: room for evaluation and fragmentation


def member_bytes(spec: RunSpec) -> int:
    """An upper estimate of one member's training memory: each parameter with its gradient and two
    AdamW moments, and the activations autograd keeps for one step over twice its batch (a size
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
    return BYTES_PER_VALUE * (4 * parameter_count(spec) + 2 * batch * per_example)


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
