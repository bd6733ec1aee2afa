"""Task datasets: every pair (a, b) of a binary operation, its label, and the train/test split."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.spec import TaskSpec


@dataclass(frozen=True)
class TaskData:
    """All pairs of one task; the model reads tokens [a, b, '='] with '=' = token vocab_size."""

    tokens: Tensor  # (N, 3) int64, every pair of the task
    labels: Tensor  # (N,) int64, the true answers
    targets: Tensor  # (N,) int64, labels with the training ones replaced by random_labels/label_noise
    train_idx: Tensor  # (D,) int64, sorted indices into the pairs
    test_idx: Tensor  # (N - D,) int64, sorted, every pair not in the training set
    vocab_size: int  # operand tokens = output classes; the vocabulary is vocab_size + 1


def operation_table(task: TaskSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, label) for every valid pair, each (N,) int64, in row-major order of (a, b)."""
    if task.op == "permutation":
        return _permutation_table(task.n)
    p = task.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if task.op == "divide":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([0] + [pow(x, -1, p) for x in range(1, p)])
        return a, b, (a * inverse[b]) % p
    label = {
        "add": lambda: a + b,
        "subtract": lambda: a - b,
        "multiply": lambda: a * b,
        "x2_plus_y2": lambda: a**2 + b**2,
        "x2_plus_xy_plus_y2": lambda: a**2 + a * b + b**2,
        "x3_plus_xy": lambda: a**3 + a * b,
    }[task.op]()
    return a, b, label % p  # torch's % is non-negative for a positive modulus


def _permutation_table(n: int) -> tuple[Tensor, Tensor, Tensor]:
    # itertools.permutations yields S_n in lexicographic order, which fixes the token indices.
    perms = list(itertools.permutations(range(n)))
    index = {perm: i for i, perm in enumerate(perms)}
    rows = [
        (i, j, index[tuple(p[q[k]] for k in range(n))])  # (p o q)(k) = p(q(k))
        for i, p in enumerate(perms)
        for j, q in enumerate(perms)
    ]
    a, b, label = torch.tensor(rows).unbind(dim=1)
    return a, b, label


def build_task(task: TaskSpec) -> TaskData:
    """The dataset of a task; the split and label noise depend only on task.data_seed."""
    a, b, labels = operation_table(task)
    vocab = task.vocab_size
    tokens = torch.stack([a, b, torch.full_like(a, vocab)], dim=1)

    g = torch.Generator().manual_seed(task.data_seed)
    perm = torch.randperm(len(labels), generator=g)
    d = task.resolved_train_size
    train_idx, test_idx = perm[:d].sort().values, perm[d:].sort().values

    targets = labels.clone()
    if task.random_labels:
        targets[train_idx] = torch.randint(vocab, (d,), generator=g)
    elif task.label_noise > 0:
        noisy = torch.randperm(d, generator=g)[: round(task.label_noise * d)]
        # a replacement label is uniform over all classes, so it is right by chance 1/vocab of the time
        targets[train_idx[noisy]] = torch.randint(vocab, (len(noisy),), generator=g)
    return TaskData(tokens, labels, targets, train_idx, test_idx, vocab)


def derived_seed(*keys: int) -> int:
    """A well-mixed seed for an independent random stream named by `keys` (e.g. seed, phase)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def subset_indices(task: TaskSpec, previous: Tensor, size: int, phase: int) -> Tensor:
    """`size` indices drawn from the previous phase's training set: examples are only removed.

    Deterministic from (data_seed, phase), independent of the model seed.
    """
    g = torch.Generator().manual_seed(derived_seed(task.data_seed, phase))
    chosen = torch.randperm(len(previous), generator=g)[:size]
    return previous.cpu()[chosen].sort().values
