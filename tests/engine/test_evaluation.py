"""Batched evaluation: every member's metrics equal a straightforward per-member computation, and
the kernels of an evaluation do not grow with the number of members."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.datasets import build_task
from engine.evaluation import METRIC_NAMES, evaluate, pair_logits_fn, per_example_loss
from engine.model import NORM_GROUPS, build_model, mlp_logits, transformer_logits
from engine.progress_measures import FourierBasis, progress_measures
from engine.sink import MemorySink
from engine.spec import MlpSpec, RunSpec, TaskSpec, TransformerSpec
from engine.train import Ensemble

from . import single_cpu_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _reference(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> list[float]:
    """[loss, accuracy, correct logit, margin] as means over the examples, one member, one set."""
    rows = torch.arange(len(targets))
    correct = logits[rows, targets]
    others = logits.clone()
    others[rows, targets] = float("-inf")
    return [
        per_example_loss(logits, targets, kind).mean().item(),
        (logits.argmax(dim=1) == targets).double().mean().item(),
        correct.mean().item(),
        (correct - others.max(dim=1).values).mean().item(),
    ]


@pytest.mark.parametrize(
    "op, model, kind",
    [
        ("add", TransformerSpec(d_model=24, n_heads=3, d_head=8, d_mlp=40), "cross_entropy"),  # the V x V grid
        ("divide", TransformerSpec(d_model=24, n_heads=3, d_head=8, d_mlp=40), "mse"),  # no b = 0: pairs of the grid
        ("add", MlpSpec(d_embed=8, d_hidden=32), "cross_entropy"),
        ("add", MlpSpec(d_embed=8, d_hidden=32), "stablemax"),
    ],
)
def test_batched_evaluation_equals_a_per_member_reference(op, model, kind):
    p = 13
    tasks = [
        TaskSpec(op=op, p=p, train_size=80),
        TaskSpec(op=op, p=p, train_size=60, label_noise=0.3, data_seed=4),
        TaskSpec(op=op, p=p, train_size=100, data_seed=5),
    ]
    specs = [RunSpec(task=task, model=model, seed=k) for k, task in enumerate(tasks)]
    data = [build_task(task) for task in tasks]
    g = torch.Generator().manual_seed(0)
    names = [name for name, _ in build_model(specs[0]).named_parameters()]
    params = {
        name: torch.randn(3, *param.shape, generator=g, dtype=torch.float64) * 0.5
        for name, param in build_model(specs[0]).named_parameters()
    }
    # member 2 trains on a subset of its training set (a later phase): its test set stays the same
    train_idx = [data[0].train_idx, data[1].train_idx, data[2].train_idx[::3]]
    test_idx = [d.test_idx for d in data]
    pairs = len(data[0].labels)
    train_mask, test_mask = torch.zeros(3, pairs, dtype=torch.bool), torch.zeros(3, pairs, dtype=torch.bool)
    for k in range(3):
        train_mask[k, train_idx[k]] = True
        test_mask[k, test_idx[k]] = True
    targets = torch.stack([d.targets for d in data])
    labels = data[0].labels
    fourier = FourierBasis.of(tasks[0]) if specs[0].supports_progress_measures else None
    with_progress = [True, False, True]
    model_logits = transformer_logits if isinstance(model, TransformerSpec) else mlp_logits
    tokens = data[0].tokens

    batched = evaluate(
        pair_logits_fn(model_logits, tokens, p, torch.device("cpu")), params, targets, labels, train_mask, test_mask,
        kind, fourier, with_progress,
    )  # fmt: skip

    assert (targets[1] != labels).any()  # the noisy member's training targets are not the labels
    for k in range(3):
        member = {name: params[name][k : k + 1] for name in names}
        # the model's training forward, one member at a time, over every pair
        logits = model_logits(member, tokens[None, :, 0], tokens[None, :, 1])[0]
        expected = _reference(logits[train_idx[k]], targets[k, train_idx[k]], kind)
        expected += _reference(logits[test_idx[k]], labels[test_idx[k]], kind)
        squares = Counter()
        for name in names:
            squares[NORM_GROUPS[name]] += member[name].square().sum().item()
        expected += [sum(squares.values()) ** 0.5] + [squares[group] ** 0.5 for group in ("embed", "attn", "mlp", "unembed")]
        train_logits = logits[train_idx[k]].float()
        float32_losses = torch.nn.functional.cross_entropy(train_logits, targets[k, train_idx[k]], reduction="none")
        expected.append((float32_losses == 0).double().mean().item())
        assert list(batched[k])[: len(METRIC_NAMES)] == METRIC_NAMES
        assert [batched[k][name] for name in METRIC_NAMES] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if fourier is not None and with_progress[k]:
            measured = progress_measures(
                fourier, logits[None], labels, targets[k][None], [train_idx[k]], member["W_E"][:, :-1],
                lambda lg, tg: per_example_loss(lg, tg, kind),
            )[0]  # fmt: skip
            assert {name: batched[k][name] for name in measured} == pytest.approx(
                {n: v.item() for n, v in measured.items()}, rel=1e-9
            )
            assert len(batched[k]) == len(METRIC_NAMES) + len(measured)
        else:
            assert len(batched[k]) == len(METRIC_NAMES)


class _OpCounter(TorchDispatchMode):
    """Every aten op dispatched (each about one kernel on a GPU), by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        accumulating = "index_put" in str(func) and (kwargs.get("accumulate") or (len(args) > 3 and args[3]))
        self.ops[str(func) + (" accumulate" if accumulating else "")] += 1
        return func(*args, **kwargs)


# Accumulation with atomics: on a GPU the summation order, and so the last bits, vary run to run.
ATOMIC_ACCUMULATION = ("index_add", "scatter_add", "scatter_reduce", "index_reduce", "accumulate")


def _evaluation_ops(members: int) -> Counter[str]:
    """The ops of one evaluation of an ensemble at P = 11 after two steps (step 1's train loss pending)."""
    small = TransformerSpec(d_model=32, n_heads=2, d_head=16, d_mlp=64)  # cheap steps; the ops are the same
    specs = [
        RunSpec(task=TaskSpec(p=11, train_size=40 + 3 * k, data_seed=k), model=small, seed=k, train_loss_every=1, device="cpu")
        for k in range(members)
    ]
    sinks = [MemorySink() for _ in specs]
    ensemble = Ensemble(specs, sinks, [None] * members, torch.device("cpu"))
    ensemble.train_step()
    ensemble.train_step()
    assert all(len(m.pending_losses) == 1 for m in ensemble.members)
    with _OpCounter() as counter:
        ensemble.evaluate(list(ensemble.members))
    assert all(sink.series["test_acc"].keys() == {2} and sink.series["train_loss"].keys() == {1, 2} for sink in sinks)
    return counter.ops


def test_ops_per_evaluation_do_not_grow_with_the_members():
    one, sixteen = _evaluation_ops(1), _evaluation_ops(16)
    assert abs(sum(sixteen.values()) - sum(one.values())) <= 0.1 * sum(one.values()), (sum(one.values()), sum(sixteen.values()))
    assert not [op for op in sixteen if any(name in op for name in ATOMIC_ACCUMULATION)]
