"""Losses and the evaluation metrics: one forward over every pair gives train and test metrics.

An evaluation is batched over members: the logits of a chunk of members over every pair (k, N,
vocab) give per-pair loss, correctness, correct logit and margin (k, N), which masked means
reduce over each member's train and test set. So the kernels of an evaluation do not grow with
the number of members (only with the number of chunks), no per-member index sets are gathered,
and nothing is read to the host: the caller reads the whole table with one transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.memory import members_per_evaluation
from engine.model import component_norms, transformer_grid_logits, transformer_logits, transformer_pair_logits
from engine.progress_measures import FourierBasis, progress_names, progress_table
from engine.spec import EVAL_METRICS, RunSpec

LossKind = Literal["cross_entropy", "mse", "stablemax"]
PairLogits = Callable[[Mapping[str, Tensor]], Tensor]  # parameters (k, ...) -> logits (k, N, vocab) of every pair

METRIC_NAMES = list(EVAL_METRICS)
NORM_COLUMNS = ("total", "embed", "attn", "mlp", "unembed")  # param_norm, norm_embed, ... in METRIC_NAMES' order


@dataclass(frozen=True)
class Loss:
    """A run's training loss: its kind, and the float type a (stable)softmax cross-entropy is
    computed in (None: the logits' own, at least float32)."""

    kind: LossKind = "cross_entropy"
    precision: torch.dtype | None = None

    @classmethod
    def of(cls, spec: RunSpec) -> Loss:
        if spec.loss == "mse":
            return cls("mse")
        return cls(spec.loss, torch.float64 if spec.resolved_loss_precision == "float64" else None)


def log_stablemax(logits: Tensor) -> Tensor:
    """log StableMax over the last dimension (Prieto et al. 2025, "Grokking at the edge of numerical
    stability", eq. 5 and their reference code's log_stablemax): s(x) = x + 1 for x >= 0 and
    1 / (1 - x) below, normalised, so that a probability reaches 1 only as a logit goes to infinity,
    where exp saturates float32 (softmax collapse). The clamp keeps the branch torch.where drops
    finite (1 / (1 - x) at x = 1 would make its zeroed gradient NaN)."""
    s = torch.where(logits >= 0, logits + 1, (1 - logits.clamp(max=0)).reciprocal())
    return s.log() - s.sum(dim=-1, keepdim=True).log()


def per_example_loss(logits: Tensor, targets: Tensor, loss: Loss | LossKind) -> Tensor:
    """(..., vocab), (...) -> (...) in the logits' type, at least float32. A cross-entropy is
    computed in Loss.precision when given (float64: the logits are widened first, as Prieto et al.
    do; the loss comes back in the logits' type, where a tiny loss is still representable)."""
    loss = Loss(loss) if isinstance(loss, str) else loss
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    if loss.kind == "mse":
        wide = logits.to(out_dtype)  # bfloat16 logits (bf16-mixed): the squares summed in float32
        return (wide - F.one_hot(targets, logits.shape[-1]).to(out_dtype)).square().mean(dim=-1)
    wide = logits.flatten(0, -2).to(torch.promote_types(out_dtype, loss.precision or out_dtype))
    if loss.kind == "stablemax":
        flat = -log_stablemax(wide).gather(-1, targets.reshape(-1, 1)).squeeze(-1)
    else:
        flat = F.cross_entropy(wide, targets.flatten(), reduction="none")
    return flat.view(targets.shape) if flat.dtype == out_dtype else flat.to(out_dtype).view(targets.shape)


def softmax_collapsed(logits: Tensor, targets: Tensor) -> Tensor:
    """(..., vocab), (...) -> (...) bool: whether the softmax cross-entropy in float32 is exactly 0,
    its gradient gone (Prieto et al. 2025's softmax collapse)."""
    return per_example_loss(logits.to(torch.float32), targets, "cross_entropy") == 0


def per_pair_metrics(logits: Tensor, targets: Tensor, kind: Loss | LossKind) -> Tensor:
    """(k, N, vocab), (k, N) -> (k, 5, N): loss, correct (1 or 0), correct logit, margin (the
    correct logit minus the largest other) and softmax collapse (1 or 0: softmax_collapsed) of
    every pair, in at least float32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    correct = logits.gather(-1, targets[..., None]).squeeze(-1)
    others = logits.scatter(-1, targets[..., None], float("-inf"))
    margin = correct - others.amax(dim=-1)
    right = logits.argmax(dim=-1) == targets  # ties go to the first class, as in accuracy elsewhere
    loss = per_example_loss(logits, targets, kind)
    # The float32 softmax cross-entropy is the loss itself when the run trains on it.
    same = (Loss(kind) if isinstance(kind, str) else kind) == Loss() and loss.dtype == torch.float32
    collapsed = loss == 0 if same else softmax_collapsed(logits, targets)
    values = [loss, right, correct, margin, collapsed]
    return torch.stack([v.to(dtype) for v in values], dim=1)


def masked_means(values: Tensor, masks: Tensor) -> Tensor:
    """values (k, M, N), masks (k, S, N) bool -> (k, S, M): the mean of each value over each set.

    Sums of the selected values, not a matmul with weights 1 / |set|: CUDA runs float32 matmuls
    in TF32 here (engine.train.resolve_device), which would round the values to 10 bits (an
    accuracy of 1 read 1.0005). torch.where, not a product with the mask, so that an infinite
    loss outside a set stays out of it. A fixed summation order (no atomics); an empty set gives
    NaN like the mean of nothing."""
    picked = torch.where(masks[:, :, None], values[:, None], 0)  # (k, S, M, N)
    return picked.sum(dim=-1) / masks.sum(dim=-1, keepdim=True).to(values.dtype)


def pair_logits_fn(model_logits: Callable[..., Tensor], tokens: Tensor, vocab: int, device: torch.device) -> PairLogits:
    """The logits of every pair of a task table (tokens (N, 3) on the host) for a model's batched
    logits function (engine.model): the transformer's are computed over the V x V grid, and when
    the table is that grid in row-major order (every op but divide: engine.datasets.operation_table)
    they are returned as they are, without indexing. Decided here on the host, once."""
    a, b = tokens[:, 0], tokens[:, 1]
    if model_logits is transformer_logits and torch.equal(a * vocab + b, torch.arange(vocab * vocab)):
        return transformer_grid_logits
    a, b = a.to(device), b.to(device)
    pair_fn = transformer_pair_logits if model_logits is transformer_logits else model_logits

    def logits_of_pairs(params: Mapping[str, Tensor]) -> Tensor:
        k = next(iter(params.values())).shape[0]
        return pair_fn(params, a.expand(k, -1), b.expand(k, -1))

    return logits_of_pairs


@torch.no_grad()
def evaluation_table(
    pair_logits: PairLogits,
    params: Mapping[str, Tensor],
    targets: Tensor,
    labels: Tensor,
    train_mask: Tensor,
    test_mask: Tensor,
    kind: Loss | LossKind,
    fourier: FourierBasis | None = None,
    with_progress: Sequence[bool] = (),
) -> Tensor:
    """Every metric of K members as a (K, len(metric_names(fourier))) tensor on the device; no host read.

    params hold K members (leading dimension); pair_logits(params) gives their logits over every
    pair (N). targets (K, N) are the labels each member trains on (noisy under random_labels /
    label_noise), labels (N,) the true ones; train_mask and test_mask (K, N) bool mark member k's
    current training set and its test set. Columns: METRIC_NAMES, then, when fourier is given,
    the progress measures (engine.progress_measures), NaN for members k without with_progress[k].
    Members are evaluated in chunks that fit the device (engine.memory.members_per_evaluation).
    """
    members = targets.shape[0]
    chunk = members_per_evaluation(params, targets.shape[1], targets.device)
    wanted = [bool(w) for w in with_progress] or [False] * members
    # The training set's pairs are scored against what the member trains on, every other pair
    # against the true label (the test set's targets are the true labels anyway).
    scored = torch.where(test_mask, labels, targets)
    sets = torch.stack([train_mask, test_mask], dim=1)  # (K, 2, N)
    tables = []
    for start in range(0, members, chunk):
        stop = min(start + chunk, members)
        part = {name: param[start:stop] for name, param in params.items()}
        logits = pair_logits(part)  # (k, N, vocab)
        means = masked_means(per_pair_metrics(logits, scored[start:stop], kind), sets[start:stop])  # (k, 2, 5)
        norms = component_norms(part)
        columns = [
            means[:, :, :4].flatten(1),
            torch.stack([norms[g] for g in NORM_COLUMNS], dim=1).to(means.dtype),
            means[:, 0, 4:],  # softmax_collapse: over the training set
        ]
        if fourier is not None:
            columns.append(_progress_columns(fourier, logits, labels, targets, train_mask, part, kind, wanted, start, stop))
        tables.append(torch.cat(columns, dim=1))
    return torch.cat(tables)


def _progress_columns(
    fourier: FourierBasis, logits: Tensor, labels: Tensor, targets: Tensor, train_mask: Tensor,
    part: Mapping[str, Tensor], kind: Loss | LossKind, wanted: list[bool], start: int, stop: int,
) -> Tensor:  # fmt: skip
    """(k, n) progress measures of members start..stop, NaN for those that do not ask for them."""
    rows = [j for j in range(stop - start) if wanted[start + j]]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = logits.new_full((stop - start, len(progress_names(fourier))), float("nan"), dtype=dtype)
    if not rows:
        return out
    index = None if len(rows) == stop - start else _row_index(rows, logits.device)
    select = (lambda x: x) if index is None else (lambda x: x[index])
    measured = progress_table(
        fourier, select(logits), labels, select(targets[start:stop]), select(train_mask[start:stop]),
        select(part["W_E"])[:, :-1], lambda lg, tg: per_example_loss(lg, tg, kind),
    ).to(dtype)  # fmt: skip
    if index is None:
        return measured
    out[index] = measured
    return out


def _row_index(rows: list[int], device: torch.device) -> Tensor:
    """A host list of rows as a device index, uploaded without making the host wait (as
    engine.train.to_device, which this module cannot import: engine.train imports it)."""
    index = torch.tensor(rows, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device, non_blocking=True)


def metric_names(fourier: FourierBasis | None) -> list[str]:
    """The columns of evaluation_table."""
    return METRIC_NAMES + (progress_names(fourier) if fourier is not None else [])


def table_rows(values: list[list[float]], names: list[str], with_progress: Sequence[bool]) -> list[dict[str, float]]:
    """Rows of an evaluation table read to the host -> one metrics dict per member (the progress
    measures only for members that asked for them)."""
    out = []
    for k, row in enumerate(values):
        width = len(names) if with_progress and with_progress[k] else len(METRIC_NAMES)
        out.append(dict(zip(names[:width], row[:width])))
    return out


def evaluate(
    pair_logits: PairLogits,
    params: Mapping[str, Tensor],
    targets: Tensor,
    labels: Tensor,
    train_mask: Tensor,
    test_mask: Tensor,
    kind: Loss | LossKind,
    fourier: FourierBasis | None = None,
    with_progress: Sequence[bool] = (),
) -> list[dict[str, float]]:
    """evaluation_table read to the host with one transfer: one metrics dict per member."""
    table = evaluation_table(pair_logits, params, targets, labels, train_mask, test_mask, kind, fourier, with_progress)
    return table_rows(table.tolist(), metric_names(fourier), with_progress)


def to_host(tensors: Sequence[Tensor]) -> list[list[float]]:
    """Tensors of any shapes and float dtypes to the host as flat lists, with one transfer."""
    if not tensors:
        return []
    flat = torch.cat([t.flatten().to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]).tolist()
    out, at = [], 0
    for t in tensors:
        out.append(flat[at : at + t.numel()])
        at += t.numel()
    return out
