"""Losses and the evaluation metrics: one forward over every pair gives train and test metrics."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model import component_norms

LossKind = Literal["cross_entropy", "mse"]


def per_example_loss(logits: Tensor, targets: Tensor, kind: LossKind) -> Tensor:
    """(B, vocab), (B,) -> (B,). Cross-entropy takes its log-softmax in float32 whatever the dtype."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits.float(), targets, reduction="none")
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return (logits - one_hot).square().mean(dim=-1)


def _split_metrics(logits: Tensor, targets: Tensor, kind: LossKind) -> list[Tensor]:
    """[loss, accuracy, correct logit, margin], each a mean over the examples (0-dim tensors)."""
    correct = logits.gather(1, targets[:, None]).squeeze(1)  # (B,)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    margin = correct - others.max(dim=1).values
    accuracy = (logits.argmax(dim=1) == targets).float()
    return [per_example_loss(logits, targets, kind).mean(), accuracy.mean(), correct.mean(), margin.mean()]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: Tensor,
    train_targets: Tensor,
    test_labels: Tensor,
    train_idx: Tensor,
    test_idx: Tensor,
    kind: LossKind,
) -> dict[str, float]:
    """Metrics of the current phase's training set and the original test set, one host sync.

    tokens (N, 3) is every pair; train_targets (N,) holds the labels the model is trained on (noisy
    under random_labels / label_noise), test_labels (N,) the true ones.
    """
    logits = model(tokens)  # (N, vocab)
    train = _split_metrics(logits[train_idx], train_targets[train_idx], kind)
    test = _split_metrics(logits[test_idx], test_labels[test_idx], kind)
    norms = component_norms(model)
    names = [
        "train_loss", "train_acc", "train_correct_logit", "train_margin",
        "test_loss", "test_acc", "test_correct_logit", "test_margin",
        "param_norm", "norm_embed", "norm_attn", "norm_mlp", "norm_unembed",
    ]  # fmt: skip
    values = [*train, *test, norms["total"], norms["embed"], norms["attn"], norms["mlp"], norms["unembed"]]
    return dict(zip(names, torch.stack(values).tolist()))
