"""Losses and the evaluation metrics: one forward over every pair gives train and test metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.model import component_norms
from engine.progress_measures import FourierBasis, progress_measures
from engine.spec import EVAL_METRICS

LossKind = Literal["cross_entropy", "mse"]


def per_example_loss(logits: Tensor, targets: Tensor, kind: LossKind) -> Tensor:
    """(..., vocab), (...) -> (...). Cross-entropy takes its log-softmax in at least float32."""
    if kind == "cross_entropy":
        wide = logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32))
        flat = F.cross_entropy(wide, targets.flatten(), reduction="none")
        return flat.view(targets.shape)
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return (logits - one_hot).square().mean(dim=-1)


def _split_metrics(logits: Tensor, targets: Tensor, kind: LossKind) -> list[Tensor]:
    """[loss, accuracy, correct logit, margin], each a mean over the examples (0-dim tensors)."""
    correct = logits.gather(1, targets[:, None]).squeeze(1)  # (B,)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    margin = correct - others.max(dim=1).values
    accuracy = (logits.argmax(dim=1) == targets).float()
    return [per_example_loss(logits, targets, kind).mean(), accuracy.mean(), correct.mean(), margin.mean()]


METRIC_NAMES = list(EVAL_METRICS)
EVAL_CHUNK_ELEMENTS = 1 << 26  # bounds one chunk's widest activation (~256 MB in float32)


@torch.no_grad()
def evaluate(
    logits_fn: Callable[[Mapping[str, Tensor], Tensor, Tensor], Tensor],
    params: Mapping[str, Tensor],
    tokens: Tensor,
    targets: Tensor,
    labels: Tensor,
    train_idx: Sequence[Tensor],
    test_idx: Sequence[Tensor],
    kind: LossKind,
    fourier: FourierBasis | None = None,
    with_progress: Sequence[bool] = (),
) -> list[dict[str, float]]:
    """Metrics of each member's current training set and its test set, with one host sync.

    params hold K members (leading dimension); one forward over every pair (tokens (N, 3)) gives a
    member's train and test metrics. targets (K, N) are the labels each member trains on (noisy
    under random_labels / label_noise), labels (N,) the true ones; train_idx[k], test_idx[k] index
    member k's sets. Members are evaluated in chunks to bound memory. Members k with
    with_progress[k] also get engine.progress_measures over the task's grid (fourier).
    """
    members, pairs = targets.shape
    width = max(param.shape[-1] for param in params.values()) * 8  # the widest activation per pair, roughly
    chunk = max(1, EVAL_CHUNK_ELEMENTS // (pairs * width))
    rows: list[Tensor] = []
    extra: list[dict[str, Tensor]] = []
    for start in range(0, members, chunk):
        part = {name: param[start : start + chunk] for name, param in params.items()}
        k = min(chunk, members - start)
        logits = logits_fn(part, tokens[:, 0].expand(k, pairs), tokens[:, 1].expand(k, pairs))  # (k, N, vocab)
        norms = component_norms(part)
        wanted = [j for j in range(k) if with_progress and with_progress[start + j]]
        progress = {}
        if wanted:
            assert fourier is not None
            rows_t = torch.tensor(wanted, device=logits.device)
            measured = progress_measures(
                fourier, logits[rows_t], labels, targets[start : start + k][rows_t],
                [train_idx[start + j] for j in wanted], part["W_E"][rows_t, :-1],
                lambda lg, tg: per_example_loss(lg, tg, kind),
            )  # fmt: skip
            progress = dict(zip(wanted, measured))
        for j in range(k):
            train, test = train_idx[start + j], test_idx[start + j]
            values = _split_metrics(logits[j, train], targets[start + j, train], kind)
            values += _split_metrics(logits[j, test], labels[test], kind)
            values += [norms[group][j] for group in ("total", "embed", "attn", "mlp", "unembed")]
            extra.append(progress.get(j, {}))
            rows.append(torch.stack(values + [v.to(values[0].dtype) for v in extra[-1].values()]))
    out = []
    for values, named in zip(_to_lists(rows), extra):
        out.append(dict(zip(METRIC_NAMES + list(named), values)))
    return out


def _to_lists(rows: list[Tensor]) -> list[list[float]]:
    """Every row to the host with one sync, rows of different lengths included."""
    flat = torch.cat(rows).tolist()
    out, at = [], 0
    for row in rows:
        out.append(flat[at : at + len(row)])
        at += len(row)
    return out
