"""The progress measures' projections are exact: synthetic logit tables built from known
frequencies are recovered, and the key-frequency part and its remainder add back to the logits."""

from __future__ import annotations

import math

import pytest
import torch

from engine.evaluation import per_example_loss
from engine.progress_measures import FourierBasis, gini, progress_measures, spectra
from engine.spec import PROGRESS_METRICS, RunSpec, TaskSpec

P = 23


def _grid(op: str = "add") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """s = (a +- b) mod P of each pair in the task table's order, the outputs c, and w_k."""
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    s = (a + b if op == "add" else a - b).flatten() % P
    return s.double(), torch.arange(P).double(), 2 * math.pi / P * torch.arange(P // 2 + 1).double()


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return per_example_loss(logits, targets, "cross_entropy")


@pytest.mark.parametrize("op", ["add", "subtract"])
def test_the_logit_spectrum_recovers_the_power_of_each_frequency(op: str) -> None:
    s, c, w = _grid(op)
    t = s[:, None] - c[None]  # (pairs, outputs): a +- b - c
    logits = 3 * torch.cos(w[4] * t) + 1.5 * torch.sin(w[7] * t) + 0.5 * torch.cos(w[2] * t + 1.0) + 0.2 * c[None]
    basis = FourierBasis.of(TaskSpec(op=op, p=P))
    logit_power, _ = spectra(basis, logits[None].float(), torch.zeros(1, P, 4))
    # a * cos(w t + phi) over the P^3 grid has squared norm a^2 P^3 / 2
    expected = torch.zeros(P // 2)
    expected[[3, 6, 1]] = torch.tensor([9.0, 2.25, 0.25]) * P**3 / 2
    assert torch.allclose(logit_power[0], expected, rtol=1e-4, atol=1e-2 * P**3)
    assert logit_power[0].topk(3).indices.tolist() == [3, 6, 1]


def test_restricted_keeps_exactly_the_key_components_and_excluded_removes_them() -> None:
    s, c, w = _grid()
    generator = torch.Generator().manual_seed(0)
    # per output c: key frequencies' cos / sin(w_k (a + b)) with random coefficients, a constant
    # per c, and noise at other frequencies of (a + b) and in a and b apart
    coef = torch.randn(5, 2, P, generator=generator, dtype=torch.float64)
    keys = [2, 5, 7, 9, 11]
    key_table = sum(
        coef[i, 0] * torch.cos(w[k] * s)[:, None] + coef[i, 1] * torch.sin(w[k] * s)[:, None] for i, k in enumerate(keys)
    )
    key_table = key_table * 4  # the key frequencies dominate the spectrum
    constant = torch.randn(P, generator=generator, dtype=torch.float64)[None]
    a = torch.arange(P).repeat_interleave(P).double()
    other = (
        0.3 * torch.cos(w[3] * s)[:, None] * torch.randn(P, generator=generator, dtype=torch.float64)
        + 0.2 * torch.sin(w[1] * a)[:, None]
    )
    logits = (key_table + constant + other).float()

    basis = FourierBasis.of(TaskSpec(p=P))
    labels = (s.long() + 1) % P
    train = torch.arange(0, P * P, 2)
    row = progress_measures(
        basis, logits[None], labels, labels[None], [train], torch.randn(1, P, 8, generator=generator), _cross_entropy
    )[0]
    assert sorted(int(row[f"key_freq_{i}"]) for i in range(1, 6)) == keys
    restricted = (key_table + constant).float()
    assert row["restricted_loss"].item() == pytest.approx(_cross_entropy(restricted, labels).mean().item(), rel=1e-4)
    excluded = (constant + other).float()[train]
    assert row["excluded_loss"].item() == pytest.approx(_cross_entropy(excluded, labels[train]).mean().item(), rel=1e-4)


def test_the_key_part_and_the_remainder_add_back_to_the_logits() -> None:
    basis = FourierBasis.of(TaskSpec(p=P))
    logits = torch.randn(2, P * P, P, generator=torch.Generator().manual_seed(1))
    sums = basis.sums_by_s(logits)
    keys = torch.tensor([[1, 4, 6, 10, 11], [2, 3, 5, 8, 9]])
    key_part = basis.key_components(sums, keys)[:, basis.s_of_pair]
    remainder = logits - key_part
    # the remainder has no component left along any key direction, and the two parts are orthogonal
    assert basis.key_components(basis.sums_by_s(remainder), keys).abs().max() < 1e-4
    assert (key_part * remainder).sum(dim=(1, 2)).abs().max() < 1e-2
    assert torch.allclose(key_part + remainder, logits)


def test_embedding_spectrum_and_gini() -> None:
    basis = FourierBasis.of(TaskSpec(p=P))
    t = torch.arange(P).double()
    w = 2 * math.pi / P
    embed = torch.stack([torch.cos(3 * w * t), torch.sin(3 * w * t), 2 * torch.cos(8 * w * t)], dim=1).float()
    _, embed_power = spectra(basis, torch.zeros(1, P * P, P), embed[None])
    expected = torch.zeros(P // 2)
    expected[2], expected[7] = P / 2 * 2, 4 * P / 2  # squared norms of the columns at k = 3 and k = 8
    assert torch.allclose(embed_power[0], expected, atol=1e-3)
    assert gini(torch.ones(10)).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(torch.tensor([0.0] * 9 + [1.0])).item() == pytest.approx(0.9)


def test_even_modulus_has_a_zero_sine_at_the_top_frequency() -> None:
    basis = FourierBasis.of(TaskSpec(p=10))
    assert basis.frequencies == [1, 2, 3, 4, 5]
    assert basis.sin[4].abs().max() == 0
    assert basis.orthonormal @ basis.orthonormal.T == pytest.approx(torch.eye(10), abs=1e-5)


def test_progress_measures_are_on_by_default_where_defined_and_a_422_field_elsewhere() -> None:
    assert RunSpec().resolved_progress_measures
    assert RunSpec(task={"op": "subtract", "p": 23}).resolved_progress_measures
    assert not RunSpec(task={"op": "multiply", "p": 23}).resolved_progress_measures
    assert not RunSpec(model={"kind": "mlp"}).resolved_progress_measures
    assert set(PROGRESS_METRICS) <= set(RunSpec().eval_metric_names())
    assert RunSpec(stop_when=[{"metric": "restricted_loss", "at_most": 0.1}]).stop_when
    for bad in ({"task": {"op": "permutation"}}, {"model": {"kind": "mlp"}}):
        with pytest.raises(ValueError, match="progress_measures: defined for the transformer on add and subtract"):
            RunSpec.model_validate({**bad, "progress_measures": True})
