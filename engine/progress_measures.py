"""Nanda et al.'s progress measures (arXiv 2301.05217, Section 5.1) from an evaluation's logits.

On (a + b) mod P the grokked transformer computes logits(a, b, c) ~ sum_k alpha_k cos(w_k (a + b - c)),
w_k = 2 pi k / P, over a few key frequencies k: a sparse Fourier circuit (C_gen) that forms long
before test accuracy moves. These measures watch it form, at every evaluation, from the logits
over all P^2 pairs that the evaluation already has:

- Logit spectrum: the power of the logits in the 2-D subspace spanned by cos and sin of
  w_k (a + b - c) over the (a, b, c) grid, for k = 1 .. P // 2 (k and P - k are the same
  frequency). The key frequencies are the KEY_FREQUENCIES frequencies of highest power now (Nanda
  found 5 at P = 113 and took them from the final model; a live series can only take the current
  ones, so early in training they are whatever dominates a memorising net's spectrum).
- restricted_loss: loss over all pairs of the logits with only the key frequencies' components
  kept, plus the constant: for every output c, the projection of the (a, b) table of logit c onto
  cos(w_k (a + b)) and sin(w_k (a + b)) for the key k, plus the mean of logit c over all pairs.
- excluded_loss: loss over the training pairs of the logits with those same components removed.
  Section 5.1 defines both projections on the MLP activations (then maps them to the logits);
  here they act on the logits, which are linear in those activations, so the residual stream's
  key-frequency part is kept (restricted) or removed (excluded) too.
- gini_logits: the Gini coefficient of the logit spectrum; gini_embed: of the norms of W_E's
  components in the Fourier basis over the token axis (the constant, then cos and sin of each
  frequency). Both rise as the representation becomes sparse in frequency.

For subtract, a - b takes the place of a + b (labels (a - b) mod P). Every sum over pairs goes
through the P values of s = (a +- b) mod P, so the measures cost a few P x P x P passes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.spec import (
    KEY_FREQUENCIES,
    PROGRESS_MEASURE_OPS,
    PROGRESS_MEASURES_DEFINED_FOR,
    PROGRESS_METRICS,
    RunSpec,
    TaskSpec,
)

__all__ = [
    "FourierBasis", "KEY_FREQUENCIES", "PROGRESS_MEASURE_OPS", "fourier_view", "gini", "key_frequencies",
    "progress_measures", "progress_names", "progress_table", "spectra",
]  # fmt: skip


@dataclass(frozen=True)
class FourierBasis:
    """The Fourier basis of one task's grid, on one device."""

    p: int
    s_of_pair: Tensor  # (P * P,) (a +- b) mod P of every pair, in the task table's row-major order
    cos: Tensor  # (F, P) cos(w_k s) for k = 1 .. F = P // 2
    sin: Tensor  # (F, P)

    @classmethod
    def of(cls, task: TaskSpec, device: torch.device | str = "cpu") -> FourierBasis:
        if task.op not in PROGRESS_MEASURE_OPS:
            raise ValueError(f"progress_measures: not defined for op '{task.op}'")
        p = task.p
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        s = (a + b if task.op == "add" else a - b) % p
        k, t = torch.arange(1, p // 2 + 1, dtype=torch.float64), torch.arange(p, dtype=torch.float64)
        angles = 2 * math.pi * torch.outer(k, t) / p
        cos, sin = angles.cos(), angles.sin()
        sin[sin.abs() < 1e-12] = 0.0  # sin(pi t) for k = P / 2: exactly zero, not rounding noise
        return cls(p, s.flatten().to(device), cos.float().to(device), sin.float().to(device))

    @property
    def frequencies(self) -> list[int]:
        return list(range(1, self.p // 2 + 1))

    @functools.cached_property
    def orthonormal(self) -> Tensor:
        """(P, P) rows: the constant, then cos and sin of each frequency, each of unit norm (sin of
        k = P / 2 is zero for even P and left out, so that the P rows are a basis). Built once per
        basis: every evaluation projects the embedding onto it."""
        rows = [torch.ones_like(self.cos[0])]
        for k in range(len(self.cos)):
            rows.append(self.cos[k])
            if 2 * (k + 1) != self.p:
                rows.append(self.sin[k])
        basis = torch.stack(rows)
        return basis / basis.norm(dim=1, keepdim=True)

    def embed_component_power(self, embeddings: Tensor) -> Tensor:
        """(K, P, d) W_E without the '=' row -> (K, P) squared norm of each orthonormal component."""
        return (embeddings.transpose(1, 2) @ self.orthonormal.to(embeddings.dtype).T).square().sum(1)

    @functools.cached_property
    def pair_of_a_s(self) -> Tensor:
        """(P, P): the pair (row of the task table) with operands a and (a +- b) mod P = s."""
        b_of_s = self.s_of_pair.view(self.p, self.p).argsort(dim=1)  # for each a, s -> b is a permutation
        return torch.arange(self.p, device=b_of_s.device)[:, None] * self.p + b_of_s

    def sums_by_s(self, logits: Tensor) -> Tensor:
        """(K, P * P, C) -> (K, P, C): the logits summed over the pairs of each s.

        A gather of the pairs laid out by (a, s) and a sum over a: the same result every run. An
        index_add_ over s_of_pair accumulates with atomics on the GPU, in an order that varies."""
        return logits[:, self.pair_of_a_s].sum(dim=1)

    def logit_spectrum(self, sums: Tensor) -> Tensor:
        """(K, P, C = P) sums by s -> (K, F) power of cos / sin(w_k (s - c)) over the (a, b, c) grid.

        cos(w(s - c)) = cos ws cos wc + sin ws sin wc, sin(w(s - c)) = sin ws cos wc - cos ws sin wc;
        each has squared norm P^2 sum_t cos^2(w t) (resp. sin^2) over the grid: P^3 / 2, except at
        k = P / 2 where cos has P^3 and sin is zero.
        """
        cos, sin = self.cos.to(sums.dtype), self.sin.to(sums.dtype)  # float64 where the model is
        cc = torch.einsum("fs,ksc,fc->kf", cos, sums, cos)
        ss = torch.einsum("fs,ksc,fc->kf", sin, sums, sin)
        sc = torch.einsum("fs,ksc,fc->kf", sin, sums, cos)
        cs = torch.einsum("fs,ksc,fc->kf", cos, sums, sin)
        along_cos, along_sin = cc + ss, sc - cs
        norm_cos = cos.square().sum(1) * self.p**2
        norm_sin = (sin.square().sum(1) * self.p**2).clamp(min=1e-30)
        return along_cos.square() / norm_cos + along_sin.square() / norm_sin

    def key_components(self, sums: Tensor, keys: Tensor) -> Tensor:
        """(K, P, C) sums by s and (K, n) key frequencies -> (K, P, C): per output c, the projection
        of the logits onto cos / sin(w_k s) for each member's keys, as a function of s."""
        cos, sin = self.cos.to(sums.dtype)[keys - 1], self.sin.to(sums.dtype)[keys - 1]  # (K, n, P)
        # a direction over the grid repeats its s-profile on the P pairs of each s
        norm_cos = (cos.square().sum(-1) * self.p).clamp(min=1e-30)  # (K, n)
        norm_sin = (sin.square().sum(-1) * self.p).clamp(min=1e-30)
        coef_cos = torch.einsum("kns,ksc->knc", cos, sums) / norm_cos[..., None]
        coef_sin = torch.einsum("kns,ksc->knc", sin, sums) / norm_sin[..., None]
        return torch.einsum("knc,kns->ksc", coef_cos, cos) + torch.einsum("knc,kns->ksc", coef_sin, sin)


def key_frequencies(spectrum: Tensor) -> Tensor:
    """(K, F) logit spectrum -> (K, n) the KEY_FREQUENCIES frequencies k of highest power, highest first."""
    return spectrum.topk(min(KEY_FREQUENCIES, spectrum.shape[-1]), dim=-1).indices + 1


def gini(values: Tensor) -> Tensor:
    """Gini coefficient along the last dimension of non-negative values: 0 when all are equal,
    (n - 1) / n when one holds everything."""
    x = values.sort(dim=-1).values
    n = x.shape[-1]
    rank = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    return ((2 * rank - n - 1) * x).sum(-1) / (n * x.sum(-1).clamp(min=1e-30))


def progress_names(basis: FourierBasis) -> list[str]:
    """The columns of progress_table: PROGRESS_METRICS, with fewer key frequencies where P // 2 is
    smaller than KEY_FREQUENCIES."""
    return list(PROGRESS_METRICS[: 4 + min(KEY_FREQUENCIES, basis.p // 2)])


def progress_table(
    basis: FourierBasis,
    logits: Tensor,
    labels: Tensor,
    train_targets: Tensor,
    train_mask: Tensor,
    embeddings: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """The measures of K members from their logits over the whole grid, as a (K, progress_names)
    tensor on the logits' device: batched over the members, no host read.

    logits (K, P * P, P) in the task table's order; labels (P * P,) the true answers; train_targets
    (K, P * P) what each member trains on, train_mask (K, P * P) bool its training pairs; embeddings
    (K, P, d) W_E without the '=' row; loss_fn(logits (..., C), targets (...)) -> per-example loss.
    key_freq_i is the i-th by power.
    """
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    sums = basis.sums_by_s(wide)  # (K, P, C)
    spectrum = basis.logit_spectrum(sums)  # (K, F)
    keys = key_frequencies(spectrum)  # (K, n)
    key_part = basis.key_components(sums, keys)[:, basis.s_of_pair]  # (K, P * P, C)
    constant = sums.sum(1, keepdim=True) / logits.shape[1]  # (K, 1, C) each logit's mean over pairs
    restricted = loss_fn(key_part + constant, labels.expand(logits.shape[0], -1)).mean(-1)  # (K,)
    # over each member's training pairs: a masked mean (a fixed summation order), not a gather of
    # a different number of pairs per member
    excluded_per_pair = torch.where(train_mask, loss_fn(wide - key_part, train_targets), 0)
    excluded = excluded_per_pair.sum(-1) / train_mask.sum(-1).to(wide.dtype)  # (K,)
    embed_power = basis.embed_component_power(embeddings.to(wide.dtype))  # (K, P)
    gini_embed, gini_logits = gini(embed_power.sqrt()), gini(spectrum)
    measures = [restricted, excluded, gini_embed, gini_logits]
    return torch.cat([torch.stack([m.to(wide.dtype) for m in measures], dim=1), keys.to(wide.dtype)], dim=1)


def progress_measures(
    basis: FourierBasis,
    logits: Tensor,
    labels: Tensor,
    train_targets: Tensor,
    train_idx: list[Tensor],
    embeddings: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> list[dict[str, Tensor]]:
    """progress_table as one dict of 0-dim tensors per member, with member k's training pairs
    given as indices train_idx[k] (a per-member loop: for tests and one-off use, not evaluation)."""
    train_mask = torch.zeros(train_targets.shape, dtype=torch.bool, device=train_targets.device)
    for k, train in enumerate(train_idx):
        train_mask[k, train] = True
    table = progress_table(basis, logits, labels, train_targets, train_mask, embeddings, loss_fn)
    names = progress_names(basis)
    return [dict(zip(names, row.unbind())) for row in table]


def spectra(basis: FourierBasis, logits: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """(K, F) the logits' power per frequency and (K, F) the embedding's (cos and sin of each
    frequency together), for the Fourier view of a checkpoint."""
    spectrum = basis.logit_spectrum(basis.sums_by_s(logits.float()))
    per_component = basis.embed_component_power(embeddings.float())  # (K, P)
    embed = torch.zeros_like(spectrum)
    index = 1
    for k in range(spectrum.shape[-1]):
        width = 1 if 2 * (k + 1) == basis.p else 2
        embed[:, k] = per_component[:, index : index + width].sum(-1)
        index += width
    return spectrum, embed


def fourier_view(spec: RunSpec, weights: Mapping[str, Tensor]) -> dict[str, Any]:
    """The Fourier view of one transformer's weights (a checkpoint): per frequency k = 1 .. P // 2,
    the power of W_E (without '=') and of the logits over all pairs, and the key frequencies."""
    if not spec.supports_progress_measures:
        raise ValueError(f"progress_measures: defined for {PROGRESS_MEASURES_DEFINED_FOR} only")
    from engine.model import transformer_grid_logits

    basis = FourierBasis.of(spec.task)
    params = {name: tensor.float()[None] for name, tensor in weights.items()}
    logits = transformer_grid_logits(params)  # add and subtract list the grid in row-major order
    logit_power, embed_power = spectra(basis, logits, params["W_E"][:, :-1])
    keys = key_frequencies(logit_power)[0]
    return {
        "frequencies": basis.frequencies,
        "embed_power": embed_power[0].tolist(),
        "logit_power": logit_power[0].tolist(),
        "key_frequencies": keys.tolist(),
    }
