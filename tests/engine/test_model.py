"""The last-position shortcut is the paper's transformer: same logits and gradients as full attention."""

import pytest
import torch

from engine.model import Mlp, Transformer, build_model, component_norms
from engine.spec import MlpSpec, RunSpec, TaskSpec, TransformerSpec
from benchmarks.reference_model import reference_forward

from . import DEVICES


def _random_batch(vocab: int, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(vocab, (batch, 3), generator=g)
    tokens[:, 2] = vocab
    return tokens, torch.randint(vocab, (batch,), generator=g)


@pytest.mark.parametrize(
    "p, model",
    [
        (7, TransformerSpec(d_model=16, n_heads=1, d_head=16, d_mlp=32)),
        (13, TransformerSpec(d_model=24, n_heads=3, d_head=5, d_mlp=40)),
        (23, TransformerSpec(d_model=32, n_heads=4, d_head=8, d_mlp=64)),
        (113, TransformerSpec()),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_shortcut_logits_and_gradients_match_all_positions_reference(p, model, device):
    spec = RunSpec(task=TaskSpec(p=p), model=model, seed=p)
    net = build_model(spec).double().to(device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in net.parameters():  # non-zero biases too, and larger scores than at init
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64).to(device) * 0.5)
    tokens, targets = (t.to(device) for t in _random_batch(p, 64, g))

    def logits_and_grads(forward):
        net.zero_grad()
        logits = forward(tokens)
        torch.nn.functional.cross_entropy(logits, targets).backward()
        return logits.detach(), {n: q.grad.clone() for n, q in net.named_parameters()}

    logits, grads = logits_and_grads(net)
    ref_logits, ref_grads = logits_and_grads(lambda t: reference_forward(net, t))
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-5, msg=name)


def test_default_transformer_has_226688_parameters_for_p113():
    d, h, k, m, vocab = 128, 4, 32, 512, 113
    expected = (
        (vocab + 1) * d  # W_E, including '='
        + 3 * d  # W_pos
        + 4 * h * d * k  # W_Q, W_K, W_V, W_O
        + d * m
        + m
        + m * d
        + d  # MLP with biases
        + d * vocab  # W_U, no output for '='
    )
    net = build_model(RunSpec(task=TaskSpec(p=113)))
    assert isinstance(net, Transformer)
    assert expected == 226_688
    assert sum(q.numel() for q in net.parameters()) == expected


def test_init_is_seeded_by_spec_seed_only():
    torch.manual_seed(123)
    a = build_model(RunSpec(task=TaskSpec(p=11), seed=5))
    torch.manual_seed(456)
    b = build_model(RunSpec(task=TaskSpec(p=11), seed=5))
    c = build_model(RunSpec(task=TaskSpec(p=11), seed=6))
    assert torch.equal(a.W_E, b.W_E)
    assert not torch.equal(a.W_E, c.W_E)


def test_mlp_variant_shapes_and_norm_groups():
    spec = RunSpec(task=TaskSpec(p=17), model=MlpSpec(d_embed=8, d_hidden=20))
    net = build_model(spec)
    assert isinstance(net, Mlp)
    tokens, _ = _random_batch(17, 5, torch.Generator().manual_seed(0))
    assert net(tokens).shape == (5, 17)
    norms = {name: norm[0] for name, norm in component_norms({n: q[None] for n, q in net.named_parameters()}).items()}
    assert set(norms) == {"embed", "attn", "mlp", "unembed", "total"}
    assert float(norms["attn"]) == 0.0
    parts = sum(float(norms[k]) ** 2 for k in ("embed", "attn", "mlp", "unembed"))
    assert float(norms["total"]) == pytest.approx(parts**0.5, rel=1e-6)


@pytest.mark.parametrize("p, heads", [(7, 1), (13, 3), (31, 4)])
def test_evaluation_over_the_pair_grid_matches_the_shortcut(p, heads):
    from engine.model import transformer_logits, transformer_pair_logits

    spec = RunSpec(task=TaskSpec(p=p), model=TransformerSpec(d_model=24, n_heads=heads, d_head=8, d_mlp=40), seed=p)
    net = build_model(spec).double()
    g = torch.Generator().manual_seed(2)
    params = {
        name: (torch.randn(param.shape, generator=g, dtype=torch.float64) * 0.5)[None] for name, param in net.named_parameters()
    }  # an ensemble of one, non-zero biases, larger scores than at init
    grid = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    keep = torch.randperm(len(grid), generator=g)[: len(grid) * 3 // 4]  # any pairs covering >= half
    a, b = grid[keep, 0][None], grid[keep, 1][None]
    torch.testing.assert_close(transformer_pair_logits(params, a, b), transformer_logits(params, a, b), rtol=0, atol=1e-9)
