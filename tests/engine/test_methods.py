"""The grokking methods of engine.spec, each against a direct transcription of its paper's
definition: StableMax and the float64 cross-entropy, softmax collapse."""

from __future__ import annotations

import math

import pytest
import torch

from engine.evaluation import Loss, per_example_loss, softmax_collapsed

from . import single_cpu_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _stablemax_reference(row: list[float], target: int) -> tuple[float, list[float]]:
    """StableMax cross-entropy of one example and its gradient, in Python floats: s(x) = x + 1 for
    x >= 0, 1 / (1 - x) below; loss = -log(s(x_t) / sum s); ds/dx = 1 above 0, 1 / (1 - x)^2 below."""
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
    ds = [1.0 if x >= 0 else 1 / (1 - x) ** 2 for x in row]
    total = sum(s)
    grad = [d / total for d in ds]
    grad[target] -= ds[target] / s[target]
    return -math.log(s[target] / total), grad


LOGITS = [
    [0.0, 1.0, -1.0, 3.5, -40.0],  # 0 and 1 exactly: the branch point, and where 1 / (1 - x) is infinite
    [1e6, -1e6, 2.0, 0.5, -0.25],  # far out on both sides: softmax is exactly one-hot there
    [-3.0, -2.0, -0.5, -7.0, -1e-3],
]
TARGETS = [3, 0, 1]


def test_stablemax_value_and_gradient_equal_a_float64_transcription():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(TARGETS)
    losses = per_example_loss(logits, targets, Loss("stablemax", torch.float64))
    losses.sum().backward()
    for k, (row, target) in enumerate(zip(LOGITS, TARGETS)):
        value, grad = _stablemax_reference(row, target)
        assert losses[k].item() == pytest.approx(value, rel=1e-13)
        assert logits.grad[k].tolist() == pytest.approx(grad, rel=1e-12, abs=1e-300)
    # from float32 logits: computed in float64, returned rounded once to float32
    narrow = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    loss32 = per_example_loss(narrow, targets, Loss("stablemax", torch.float64))
    assert loss32.dtype == torch.float32
    assert loss32.tolist() == pytest.approx([_stablemax_reference(r, t)[0] for r, t in zip(LOGITS, TARGETS)], rel=1e-7)
    loss32.sum().backward()
    assert torch.isfinite(narrow.grad).all()


def test_a_confident_example_collapses_softmax_in_float32_but_not_stablemax_or_float64():
    # The correct logit 30 above the rest: exp(-30) ~ 1e-13 is under float32's half-ulp of 1 (and
    # over float64's), so the float32 softmax cross-entropy is exactly 0, and so is its gradient
    # on the correct logit (the others keep gradients of ~1e-14).
    logits = torch.tensor([[32.0, 0.0, -3.0, 2.0]], requires_grad=True)
    targets = torch.tensor([0])
    assert softmax_collapsed(logits.detach(), targets).tolist() == [True]
    float32 = per_example_loss(logits, targets, "cross_entropy")
    (grad32,) = torch.autograd.grad(float32.sum(), logits)
    assert float32.item() == 0.0 and grad32[0, 0] == 0
    for loss in (Loss("cross_entropy", torch.float64), Loss("stablemax", torch.float64)):
        value = per_example_loss(logits, targets, loss)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        assert value.item() > 0 and grad[0, 0] < 0, loss  # still pushing the correct logit up
    assert softmax_collapsed(torch.tensor([[10.0, 0.0]]), torch.tensor([0])).tolist() == [False]
