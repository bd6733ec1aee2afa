"""Process-wide device settings, set once by whoever owns the process (a worker at its start,
`python -m engine`, a benchmark), never as a side effect of training: a library that trains must
not change how every other float32 matmul in its caller's process is computed."""

from __future__ import annotations

import torch


def configure_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls (cuBLAS) and convolutions (cuDNN) on CUDA: 10-bit mantissa inputs,
    several times the float32 throughput on Ampere and later GPUs. The flags exist, and can be set,
    without a GPU; on the CPU they change nothing."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
