"""Engine tests: the library alone, on the CPU, without the service."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

# The devices an equivalence test runs on: the CPU always, CUDA where there is a GPU (CI has none,
# so there the CUDA cases are skipped; `pytest -m cuda` on a GPU host runs exactly them).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]),
]


@contextmanager
def single_cpu_thread() -> Iterator[None]:
    """Train with one thread: CI shares 2 cores between test processes, and two OpenMP threads
    competing with another busy process ran our steps ~4x slower (measured 86 vs 22 ms a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def float64() -> Iterator[None]:
    """Train in float64 (test modules import this fixture). In float32 a padded member's sums run
    in another order, and Adam turns those last-bit differences into ~1e-3 drift over tens of
    steps; in float64 the drift stays ~1e-14: the same computation."""
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)
