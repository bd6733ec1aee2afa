"""Task tables are the operations they claim to be, and splits and subsets are seeded and nested."""

import itertools

import pytest
import torch

from engine.spec import TaskSpec
from engine.datasets import build_task, operation_table, subset_indices


@pytest.mark.parametrize(
    "op, f",
    [
        ("add", lambda a, b, p: (a + b) % p),
        ("subtract", lambda a, b, p: (a - b) % p),
        ("multiply", lambda a, b, p: (a * b) % p),
        ("divide", lambda a, b, p: next(c for c in range(p) if (c * b) % p == a)),
        ("x2_plus_y2", lambda a, b, p: (a * a + b * b) % p),
        ("x2_plus_xy_plus_y2", lambda a, b, p: (a * a + a * b + b * b) % p),
        ("x3_plus_xy", lambda a, b, p: (a**3 + a * b) % p),
    ],
)
def test_modular_tables_match_the_operation(op, f):
    task = TaskSpec(op=op, p=11, train_size=10)
    a, b, label = operation_table(task)
    assert len(label) == task.num_pairs
    assert [int(c) for c in label] == [f(int(x), int(y), 11) for x, y in zip(a, b)]


def test_permutation_table_is_composition_in_lexicographic_order():
    task = TaskSpec(op="permutation", n=3, train_size=10)
    perms = list(itertools.permutations(range(3)))
    a, b, label = operation_table(task)
    assert len(label) == 36
    for x, y, z in zip(a.tolist(), b.tolist(), label.tolist()):
        assert perms[z] == tuple(perms[x][perms[y][k]] for k in range(3))


def test_split_is_a_seeded_partition_with_the_equals_token():
    task = TaskSpec(p=13, train_size=50, data_seed=3)
    data = build_task(task)
    assert data.tokens.shape == (169, 3) and bool((data.tokens[:, 2] == 13).all())
    assert len(data.train_idx) == 50 and len(data.test_idx) == 119
    assert sorted(torch.cat([data.train_idx, data.test_idx]).tolist()) == list(range(169))
    assert torch.equal(build_task(task).train_idx, data.train_idx)
    assert not torch.equal(build_task(task.model_copy(update={"data_seed": 4})).train_idx, data.train_idx)
    assert torch.equal(data.targets, data.labels)


def test_random_labels_and_label_noise_touch_only_training_targets():
    clean = build_task(TaskSpec(p=31, train_size=400))
    shuffled = build_task(TaskSpec(p=31, train_size=400, random_labels=True))
    noisy = build_task(TaskSpec(p=31, train_size=400, label_noise=0.25))
    for data in (shuffled, noisy):
        assert torch.equal(data.train_idx, clean.train_idx)
        assert torch.equal(data.targets[data.test_idx], data.labels[data.test_idx])
    agree = lambda d: (d.targets[d.train_idx] == d.labels[d.train_idx]).float().mean().item()  # noqa: E731
    assert agree(shuffled) < 0.15  # chance is 1/31
    assert 100 - 100 * agree(noisy) == pytest.approx(25 * 30 / 31, abs=3)  # a replaced label is right 1/31 of the time


def test_phase_subsets_are_nested_and_seeded():
    task = TaskSpec(p=13, train_size=100)
    train = build_task(task).train_idx
    first = subset_indices(task, train, 40, phase=1)
    second = subset_indices(task, first, 10, phase=2)
    assert set(second.tolist()) <= set(first.tolist()) <= set(train.tolist())
    assert len(set(first.tolist())) == 40
    assert torch.equal(first, subset_indices(task, train, 40, phase=1))
    assert not torch.equal(first, subset_indices(task, train, 40, phase=2))
