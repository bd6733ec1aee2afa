"""The grokking methods of engine.spec, each against a direct transcription of its paper's
definition: StableMax and the float64 cross-entropy, softmax collapse, ⊥Grad, Grokfast, Omnigrok's initial scale and norm constraint, and Muon against
torch.optim.Muon."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from engine.evaluation import Loss, per_example_loss, softmax_collapsed
from engine.model import build_model
from engine.optim import MUON_PARAMETERS, EnsembleOptimizer, as_matrix
from engine.packing import pack_key
from engine.sink import MemorySink
from engine.spec import (
    EmaGradFilter,
    MaGradFilter,
    OptimizerSpec,
    PhaseSpec,
    RunSpec,
    TaskSpec,
    TransformerSpec,
)
from engine.train import Ensemble

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


def _orthograd_reference(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Prieto et al.'s ⊥Grad of one tensor, transcribed: the projection, rescaled to g's norm."""
    w, g = w.flatten(), g.flatten()
    proj = torch.dot(w, g) / (torch.dot(w, w) + 1e-30)
    g_orth = g - proj * w
    return g_orth * (g.norm() / (g_orth.norm() + 1e-30))


def _stacked_parameters(members: int, generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A flat (K, N) buffer and its views shaped like a small model's tensors (one of them zero, as
    the biases start)."""
    shapes = [(4, 3), (2, 3, 5), (7,), (5, 2)]
    flat = torch.randn(members, sum(math.prod(s) for s in shapes), generator=generator, dtype=torch.float64)
    views = [part.view(members, *shape) for part, shape in zip(flat.split([math.prod(s) for s in shapes], dim=1), shapes)]
    views[2].zero_()
    return flat, views


def test_orthogonal_gradients_are_orthogonal_per_member_and_tensor_and_keep_their_norm():
    g = torch.Generator().manual_seed(0)
    flat, views = _stacked_parameters(3, g)
    specs = [OptimizerSpec(kind="sgd", orthogonal_gradients=True)] * 3
    optimizer = EnsembleOptimizer(specs, views, flat)
    grad = torch.randn(flat.shape, generator=g, dtype=torch.float64)
    # A gradient along its tensor: all of it is removed, and what rounding leaves is rescaled to its
    # norm (as the authors' code does): noise, compared only by its norm.
    grad[1, :12] = 3 * flat[1, :12]
    projected = optimizer.orthogonal_gradient(grad)
    for k in range(3):
        for (start, end), view in zip(optimizer.columns, views):
            w, g_k, p_k = flat[k, start:end], grad[k, start:end], projected[k, start:end]
            assert p_k.norm().item() == pytest.approx(g_k.norm().item(), rel=1e-6)
            if k == 1 and start == 0:
                continue
            torch.testing.assert_close(p_k, _orthograd_reference(view[k], g_k), rtol=1e-9, atol=1e-12)
            if w.any():
                assert abs(torch.dot(w, p_k)) <= 1e-6 * w.norm() * p_k.norm()
    assert torch.equal(projected[:, 12:][:, 30:37], grad[:, 12:][:, 30:37])  # a zero tensor's gradient is kept


def test_orthogonal_adamw_is_torch_adamw_on_the_transcribed_projection():
    g = torch.Generator().manual_seed(1)
    flat, views = _stacked_parameters(2, g)
    flat32, views32 = flat.float(), []
    at = 0
    for view in views:
        views32.append(flat32[:, at : at + view[0].numel()].view(view.shape))
        at += view[0].numel()
    specs = [
        OptimizerSpec(lr=1e-2, weight_decay=0.5, orthogonal_gradients=True),
        OptimizerSpec(lr=3e-3, orthogonal_gradients=True),
    ]
    ensemble = EnsembleOptimizer(specs, views32, flat32)
    singles = [[view[k].clone().requires_grad_() for view in views32] for k in range(2)]
    torch_opts = [torch.optim.AdamW(ps, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay) for ps, s in zip(singles, specs)]
    lr, wd = (
        torch.tensor([s.lr for s in specs], dtype=torch.float64),
        torch.tensor([s.weight_decay for s in specs], dtype=torch.float64),
    )
    for _ in range(5):
        grad = torch.randn(flat32.shape, generator=g)
        ensemble.step(lr, wd, grad=grad.clone())
        for k, (params, opt) in enumerate(zip(singles, torch_opts)):
            for (start, end), p in zip(ensemble.columns, params):
                p.grad = _orthograd_reference(p.detach(), grad[k, start:end]).view(p.shape)
            opt.step()
    for k, params in enumerate(singles):
        for view, p in zip(views32, params):
            torch.testing.assert_close(view[k], p.detach(), rtol=0, atol=1e-6)


class _GrokfastReference:
    """Lee et al.'s gradfilter_ema and gradfilter_ma (grokfast.py), transcribed for one model given
    as named tensors: the EMA starts at the first gradient; the MA filters once its deque is full."""

    def __init__(self, spec):
        self.spec, self.grads = spec, None

    def __call__(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec, out = self.spec, {}
        if spec.kind == "ema":
            if self.grads is None:
                self.grads = {n: g.clone() for n, g in grads.items()}
            for n, g in grads.items():
                self.grads[n] = self.grads[n] * spec.alpha + g * (1 - spec.alpha)
                out[n] = g + self.grads[n] * spec.lamb
            return out
        if self.grads is None:
            self.grads = {n: collections.deque(maxlen=spec.window) for n in grads}
        for n, g in grads.items():
            self.grads[n].append(g.clone())
            out[n] = g + sum(self.grads[n]) / len(self.grads[n]) * spec.lamb if len(self.grads[n]) == spec.window else g
        return out


@pytest.mark.parametrize(
    "filters",
    [
        [EmaGradFilter(kind="ema"), EmaGradFilter(kind="ema", alpha=0.5, lamb=5.0)],
        [MaGradFilter(kind="ma", window=3), MaGradFilter(kind="ma", window=3, lamb=0.5)],
    ],
    ids=["ema", "ma"],
)
def test_grokfast_filters_every_members_gradient_as_the_papers_algorithm(filters):
    g = torch.Generator().manual_seed(2)
    flat, views = _stacked_parameters(2, g)
    optimizer = EnsembleOptimizer([OptimizerSpec(kind="sgd")] * 2, views, flat, grad_filters=filters)
    references = [_GrokfastReference(spec) for spec in filters]
    names = [str(i) for i in range(len(views))]
    for step in range(8):
        if step == 5:
            optimizer.reset(1)  # a phase's reset_optimizer: the member's filter starts over
            references[1] = _GrokfastReference(filters[1])
        grad = torch.randn(flat.shape, generator=g, dtype=torch.float64)
        filtered = optimizer.grad_filter.apply(grad)
        for k, reference in enumerate(references):
            expected = reference({n: grad[k, start:end] for n, (start, end) in zip(names, optimizer.columns)})
            torch.testing.assert_close(filtered[k], torch.cat([expected[n] for n in names]), rtol=1e-12, atol=1e-12)
        if filters[0].kind == "ma" and step < 2:
            assert torch.equal(filtered[0], grad[0])  # the authors' warm-up: the window is not full yet


def test_init_scale_multiplies_the_default_initialisation():
    base = RunSpec(task=TaskSpec(p=11, train_size=60), model=TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32))
    scaled = base.model_copy(update={"model": base.model.model_copy(update={"init_scale": 3.0})})
    default, tripled = build_model(base).state_dict(), build_model(scaled).state_dict()
    for name, value in default.items():
        assert torch.equal(tripled[name], 3.0 * value), name
    assert pack_key(base) == pack_key(scaled)  # members at different scales train together


@pytest.mark.parametrize("constraint", [{"fixed": True}, {"value": 20.0}])
def test_the_weight_norm_is_held_after_every_step(constraint):
    # SGD at a large rate and no weight decay: unconstrained, the norm would move every step.
    model = TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32, init_scale=2.0)
    specs = [
        RunSpec(
            task=TaskSpec(p=11, train_size=60), model=model, seed=seed, weight_norm=constraint, device="cpu",
            phases=[PhaseSpec(steps=12)], optimizer=OptimizerSpec(kind=kind, lr=lr, weight_decay=0.0),
        )
        for seed, (kind, lr) in enumerate([("sgd", 3.0), ("adamw", 3e-2)])
    ]  # fmt: skip
    ensemble = Ensemble(specs, [MemorySink() for _ in specs], [None, None], torch.device("cpu"))
    initial = torch.linalg.vector_norm(ensemble.flat, dim=1)
    target = initial if "fixed" in constraint else torch.full((2,), 20.0)
    before = ensemble.flat.clone()
    for _ in range(12):
        ensemble.train_step()
        norms = torch.linalg.vector_norm(ensemble.flat.double(), dim=1)
        torch.testing.assert_close(norms, target.double(), rtol=1e-6, atol=0)
        assert not torch.equal(before, ensemble.flat)  # it trains: the direction moves
        before = ensemble.flat.clone()


def test_muon_trains_a_member_as_torch_muon_and_adamw_on_the_same_split_step_by_step():
    spec = RunSpec(task=TaskSpec(p=11, train_size=60), model=TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32))
    state = build_model(spec).state_dict()
    names = list(state)
    flat = torch.cat([value.flatten() for value in state.values()])[None].repeat(2, 1)  # two members
    views, at = [], 0
    for value in state.values():
        views.append(flat[:, at : at + value.numel()].view(2, *value.shape))
        at += value.numel()
    specs = [
        OptimizerSpec(kind="muon", lr=2e-2, weight_decay=0.1),
        OptimizerSpec(kind="muon", lr=5e-3, weight_decay=1.0, muon_momentum=0.8),
    ]
    ensemble = EnsembleOptimizer(specs, views, flat, names=names)
    references = []
    for k, opt in enumerate(specs):
        params = {n: as_matrix(n, v[k : k + 1])[0].clone().requires_grad_() for n, v in zip(names, views)}
        muon = torch.optim.Muon(
            [params[n] for n in names if n in MUON_PARAMETERS], lr=opt.lr, weight_decay=opt.weight_decay,
            momentum=opt.resolved_muon_momentum, adjust_lr_fn="match_rms_adamw",
        )  # fmt: skip
        adamw = torch.optim.AdamW(
            [params[n] for n in names if n not in MUON_PARAMETERS], lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        references.append((params, muon, adamw))
    assert [n for n in names if n in MUON_PARAMETERS] == list(MUON_PARAMETERS)
    lr = torch.tensor([s.lr for s in specs], dtype=torch.float64)
    wd = torch.tensor([s.weight_decay for s in specs], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        grad = torch.randn(flat.shape, generator=g)
        ensemble.step(lr, wd, grad=grad.clone())
        for k, (params, muon, adamw) in enumerate(references):
            for n, (start, end), view in zip(names, ensemble.columns, views):
                params[n].grad = as_matrix(n, grad[k : k + 1, start:end].view(1, *view.shape[1:]))[0].clone()
            muon.step()
            adamw.step()
            for n, view in zip(names, views):
                torch.testing.assert_close(as_matrix(n, view[k : k + 1])[0], params[n].detach(), rtol=0, atol=1e-6, msg=n)
    # the state resumes as torch's optimizers hold it
    saved = ensemble.member_state_dict(1, specs[1], specs[1].lr, specs[1].weight_decay)
    params, muon, adamw = references[1]
    for j, n in enumerate(n for n in names if n in MUON_PARAMETERS):
        torch.testing.assert_close(saved["muon"]["state"][j]["momentum_buffer"], muon.state[params[n]]["momentum_buffer"])
    fresh = EnsembleOptimizer(specs, [v.clone() for v in views], flat.clone(), names=names)
    fresh.load_member_state_dict(1, saved)
    for i in fresh.muon:  # Muon's columns of its buffer, AdamW's moments everywhere (Muon's columns unused)
        start, end = fresh.columns[i]
        assert torch.equal(fresh.muon_buffer[1, start:end], ensemble.muon_buffer[1, start:end])
    for i in set(range(len(names))) - set(fresh.muon):
        start, end = fresh.columns[i]
        assert torch.equal(fresh.exp_avg[1, start:end], ensemble.exp_avg[1, start:end])
