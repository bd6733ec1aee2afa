"""Which GPU each of `groklab up`'s workers trains on (GROKLAB_GPUS, `--gpus`).

Each worker process gets one GPU as its CUDA_VISIBLE_DEVICES, so it sees that GPU alone, as
`cuda:0`: `GROKLAB_DEVICE=auto` trains there, and engine/memory.py sizes its packs from that
GPU's free memory. The worker count defaults to the number of GPUs; with neither set, `groklab up`
pins a worker to every GPU it sees, or on a host without one starts a worker per two cores
(default_worker_plan). More workers than GPUs share
them round-robin (worker i on GPU i mod n), for models too small to fill a GPU with one worker;
fewer workers than listed GPUs is an error, since a listed GPU would sit idle unnoticed.
The setting's ids are checked where it is read (groklab.settings).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from groklab.settings import comma_list


class GpuConfigError(ValueError):
    """GROKLAB_GPUS (or --gpus) and GROKLAB_WORKERS (or --workers) do not make a worker plan."""


def visible_gpu_count() -> int:
    # torch only here: `groklab up` without `all` never loads it.
    import torch

    return torch.cuda.device_count()


def listed_gpus(gpus: str | None, environ: Mapping[str, str]) -> list[str] | None:
    """The GPU ids that Settings.gpus names; None when workers are not pinned.

    'all' is every GPU this process sees: within its own CUDA_VISIBLE_DEVICES when that is set
    (so `CUDA_VISIBLE_DEVICES=2,3 groklab up --gpus all` pins workers to GPUs 2 and 3).
    """
    if gpus is None:
        return None
    if gpus != "all":
        return gpus.split(",")
    count = visible_gpu_count()
    if count == 0:
        raise GpuConfigError(
            "GROKLAB_GPUS=all (--gpus all) but this process sees no CUDA GPU (torch.cuda.device_count() "
            "is 0: no GPU, no driver, a CPU build of torch, or an empty CUDA_VISIBLE_DEVICES); unset "
            "GROKLAB_GPUS to train on the CPU"
        )
    visible = comma_list(environ.get("CUDA_VISIBLE_DEVICES"))
    return visible[:count] if visible else [str(i) for i in range(count)]


def assign(gpus: list[str], workers: int | None) -> list[str]:
    """The GPU of each worker, in worker order."""
    if workers is None:
        return list(gpus)
    if workers < len(gpus):
        raise GpuConfigError(
            f"--workers {workers} (GROKLAB_WORKERS) is fewer than the {len(gpus)} GPUs of --gpus "
            f"(GROKLAB_GPUS={','.join(gpus)}): every listed GPU gets a worker; list only the GPUs to use, "
            "or leave the worker count unset for one worker per GPU"
        )
    return [gpus[i % len(gpus)] for i in range(workers)]


CORES_PER_WORKER = 2
"""`groklab up`'s default on a CPU host: a worker per two cores (each gets two torch threads), as
runs side by side use the cores better than one run on many threads, and fair share needs a
worker free more often than not."""
MAX_DEFAULT_WORKERS = 16


def default_worker_plan(gpus: str | None, workers: int | None, device: str) -> tuple[str | None, int | None]:
    """GROKLAB_GPUS and GROKLAB_WORKERS as `groklab up` uses them when neither is told: a worker
    pinned to each visible GPU, or else a worker per CORES_PER_WORKER cores. What is told is kept."""
    if gpus is not None or workers is not None:
        return gpus, workers
    if device != "cpu" and visible_gpu_count() > 0:
        return "all", None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return None, max(1, min(MAX_DEFAULT_WORKERS, cores // CORES_PER_WORKER))


def worker_gpus(gpus: str | None, workers: int | None, environ: Mapping[str, str]) -> list[str] | None:
    """Each worker's GPU, in worker order; None when workers are not pinned."""
    listed = listed_gpus(gpus, environ)
    return None if listed is None else assign(listed, workers)


def worker_envs(names: list[str], gpus: list[str] | None) -> dict[str, dict[str, str]]:
    """What each named worker process sees of the GPUs: its own, alone (nothing set if unpinned)."""
    if gpus is None:
        return {}
    return {name: {"CUDA_VISIBLE_DEVICES": gpu} for name, gpu in zip(names, gpus, strict=True)}
