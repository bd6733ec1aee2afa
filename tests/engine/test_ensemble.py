"""An ensemble trains each member exactly as train_run trains it alone, whatever their differences."""

import random

import pytest
import torch

from engine.memory import MEMORY_FRACTION, member_bytes, members_that_fit
from engine.optim import EnsembleOptimizer
from engine.packing import pack_key
from engine.sink import MemorySink
from engine.spec import OptimizerSpec, PhaseSpec, RunSpec, TaskSpec, TransformerSpec
from engine.train import size_classes, train_ensemble, train_run

from . import DEVICES, float64, single_cpu_thread  # noqa: F401  (float64: a fixture the tests ask for)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _spec(**changes) -> RunSpec:
    base = dict(
        task=TaskSpec(p=23, train_size=250), phases=[PhaseSpec(steps=40)], eval_every=10, train_loss_every=3, device="cpu"
    )
    return RunSpec(**{**base, **changes})


MEMBERS = [
    _spec(seed=1),
    _spec(
        seed=2,
        task=TaskSpec(p=23, train_size=150, data_seed=3),
        optimizer=OptimizerSpec(lr=3e-3, weight_decay=0.3, warmup_steps=5),
        phases=[PhaseSpec(steps=20), PhaseSpec(steps=30, train_set="subset", subset_size=70, weight_decay=2.0)],
    ),
    _spec(
        seed=3,
        task=TaskSpec(p=23, train_size=100, data_seed=5, random_labels=True),
        optimizer=OptimizerSpec(weight_decay=0.1, betas=(0.8, 0.95)),
    ),
]


def _assert_same_series(a: MemorySink, b: MemorySink) -> None:
    assert set(a.series) == set(b.series)
    for name, points in a.series.items():
        assert points.keys() == b.series[name].keys(), name
        for step, value in points.items():
            assert b.series[name][step] == pytest.approx(value, abs=1e-5), (name, step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.usefixtures("float64")
def test_ensemble_of_different_members_matches_each_run_trained_alone(device):
    members = [spec.model_copy(update={"device": device}) for spec in MEMBERS]
    assert len({pack_key(spec) for spec in members}) == 1
    alone = [MemorySink() for _ in members]
    for spec, sink in zip(members, alone):
        train_run(spec, sink)
    together = [MemorySink() for _ in members]
    results = train_ensemble(members, together)
    assert [r.final_step for r in results] == [40, 50, 40]
    for a, b in zip(alone, together):
        _assert_same_series(a, b)


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# Each method option (engine.spec) with different values per member, members of one pack_key.
METHOD_MEMBERS = {
    "eps": [{"optimizer": {"eps": 1e-8}}, {"optimizer": {"eps": 1e-3, "lr": 3e-3}}, {"optimizer": {"eps": 1e-5}}],
    "stablemax": [{"loss": "stablemax"}, {"loss": "stablemax", "optimizer": {"lr": 3e-3}}, {"loss": "stablemax"}],
    "orthogonal adamw": [
        {"optimizer": {"orthogonal_gradients": True, "weight_decay": 0.0}},
        {"optimizer": {"orthogonal_gradients": True, "lr": 3e-3}},
        {"optimizer": {"orthogonal_gradients": True}},
    ],
    "orthogonal sgd": [
        {"optimizer": {"kind": "sgd", "lr": 0.1, "orthogonal_gradients": True}},
        {"optimizer": {"kind": "sgd", "lr": 0.2, "weight_decay": 0.0, "orthogonal_gradients": True}},
        {"optimizer": {"kind": "sgd", "lr": 0.05, "orthogonal_gradients": True}},
    ],
    "grokfast ema": [
        {"grad_filter": {"kind": "ema"}},
        {"grad_filter": {"kind": "ema", "alpha": 0.9, "lamb": 5.0}},
        {"grad_filter": {"kind": "ema", "lamb": 0.5}},
    ],
    "grokfast ma": [
        {"grad_filter": {"kind": "ma", "window": 4}},
        {"grad_filter": {"kind": "ma", "window": 4, "lamb": 1.0}},
        {"grad_filter": {"kind": "ma", "window": 4, "lamb": 2.0}},
    ],
    "omnigrok": [
        {"weight_norm": {"fixed": True}, "model": {"init_scale": 3.0}, "optimizer": {"weight_decay": 0.0}},
        {"weight_norm": {"value": 30.0}, "model": {"init_scale": 1.0}},
        {"weight_norm": {"fixed": True}, "model": {"init_scale": 0.5}, "optimizer": {"lr": 3e-3}},
    ],
    "muon": [
        {"optimizer": {"kind": "muon"}},
        {"optimizer": {"kind": "muon", "lr": 3e-3, "muon_momentum": 0.9}},
        {"optimizer": {"kind": "muon", "weight_decay": 0.1}},
    ],
    "bf16-mixed": [
        {"precision": "bf16-mixed"},
        {"precision": "bf16-mixed", "optimizer": {"lr": 3e-3}},
        {"precision": "bf16-mixed", "optimizer": {"weight_decay": 0.1}},
    ],
    "float64 softmax": [
        {"loss_precision": "float64"},
        {"loss_precision": "float64", "optimizer": {"lr": 3e-3}},
        {"loss_precision": "float64"},
    ],
}


@pytest.mark.parametrize("option", list(METHOD_MEMBERS))
@pytest.mark.usefixtures("float64")
def test_an_ensemble_with_a_method_option_trains_each_member_as_alone(option):
    tiny = TransformerSpec(d_model=32, n_heads=2, d_head=16, d_mlp=64).model_dump()
    base = {
        "task": {"p": 11, "train_size": 60},
        "model": tiny,
        "phases": [{"steps": 25}],
        "eval_every": 5,
        "train_loss_every": 2,
        "device": "cpu",
    }
    sizes = [60, 40, 60]  # one member in its own size class: gathered rows in the pass
    specs = [
        RunSpec.model_validate(_merged({**base, "seed": k, "task": {"p": 11, "train_size": size}}, changes))
        for k, (size, changes) in enumerate(zip(sizes, METHOD_MEMBERS[option]))
    ]
    assert len({pack_key(spec) for spec in specs}) == 1
    alone = [MemorySink() for _ in specs]
    for spec, sink in zip(specs, alone):
        train_run(spec, sink)
    together = [MemorySink() for _ in specs]
    train_ensemble(specs, together)
    for a, b in zip(alone, together):
        if option != "bf16-mixed":
            _assert_same_series(a, b)
            continue
        # bfloat16 GEMMs round each sum to 8 bits, and a GEMM sums in another order for another
        # number of members: an element now and then one bit apart, so a member's losses follow
        # its lone run's to ~0.1% (its accuracy may flip an example), not to 1e-5.
        for name in ("train_loss", "test_loss", "param_norm"):
            assert b.series[name] == pytest.approx(a.series[name], rel=1e-2), name
    assert alone[0].series["train_loss"] != alone[1].series["train_loss"]


def test_size_classes_never_make_a_member_compute_more_than_twice_its_examples():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(1, 5000) for _ in range(rng.randint(1, 20))]
        classes = size_classes(sizes)
        assert sorted(i for c in classes for i in c) == list(range(len(sizes)))
        for c in classes:
            assert max(sizes[i] for i in c) <= 2 * min(sizes[i] for i in c)
    assert size_classes([100, 3000, 190, 2000]) == [[1, 3], [0, 2]]


def test_per_phase_weight_decay_is_honoured():
    by_phase, by_optimizer = MemorySink(), MemorySink()
    train_run(_spec(phases=[PhaseSpec(steps=20, weight_decay=0.0)]), by_phase)
    train_run(_spec(phases=[PhaseSpec(steps=20)], optimizer=OptimizerSpec(weight_decay=0.0)), by_optimizer)
    _assert_same_series(by_optimizer, by_phase)
    default = MemorySink()
    train_run(_spec(phases=[PhaseSpec(steps=20)]), default)
    assert default.series["param_norm"][20] < by_phase.series["param_norm"][20]


def test_ensemble_adamw_matches_torch_adamw_per_member():
    g = torch.Generator().manual_seed(0)
    specs = [OptimizerSpec(lr=1e-2, weight_decay=1.0), OptimizerSpec(lr=3e-3, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-3)]
    start = torch.randn(2, 5, 4, generator=g)
    stacked = start.clone().requires_grad_()
    ensemble = EnsembleOptimizer(specs, [stacked])
    singles = [start[k].clone().requires_grad_() for k in range(2)]
    torch_opts = [
        torch.optim.AdamW([p], lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, eps=s.eps) for p, s in zip(singles, specs)
    ]
    for _ in range(5):
        grad = torch.randn(2, 5, 4, generator=g)
        stacked.grad = grad.clone()
        ensemble.step(
            torch.tensor([s.lr for s in specs], dtype=torch.float64),
            torch.tensor([s.weight_decay for s in specs], dtype=torch.float64),
        )
        for k, (p, opt) in enumerate(zip(singles, torch_opts)):
            p.grad = grad[k].clone()
            opt.step()
    for k, p in enumerate(singles):
        torch.testing.assert_close(stacked[k], p, rtol=0, atol=1e-6)
        state = ensemble.member_state_dict(k, specs[k], specs[k].lr, specs[k].weight_decay)["state"][0]
        torch.testing.assert_close(state["exp_avg_sq"], torch_opts[k].state[p]["exp_avg_sq"], rtol=1e-6, atol=0)


class _BrokenSink(MemorySink):
    def log(self, step, metrics):
        if step >= 20:
            raise OSError("disk full")
        super().log(step, metrics)


@pytest.mark.usefixtures("float64")
def test_a_failing_sink_drops_its_member_and_a_stopped_member_resumes_alone(tmp_path):
    specs = MEMBERS
    alone = [MemorySink() for _ in specs]
    for spec, sink in zip(specs, alone):
        train_run(spec, sink)
    sinks = [MemorySink(), _BrokenSink(), MemorySink()]
    dirs = [tmp_path / str(k) for k in range(3)]
    results = train_ensemble(specs, sinks, checkpoints=dirs, should_stop=lambda k: k == 2 and sinks[2].last_step >= 15)
    assert results[0].error is None and results[0].final_step == 40 and not results[0].stopped
    assert results[1].error == "OSError: disk full" and results[1].final_step == 20
    assert results[2].stopped and results[2].final_step == 15
    _assert_same_series(alone[0], sinks[0])

    resumed = MemorySink()
    train_run(specs[2], resumed, checkpoint=dirs[2])
    merged = MemorySink()
    for piece in (sinks[2], resumed):
        for name, points in piece.series.items():
            merged.series.setdefault(name, {}).update(points)
    _assert_same_series(alone[2], merged)
    assert min(resumed.series["train_loss"]) == 15


def test_members_that_fit_follow_the_memory_budget_and_the_largest_member():
    small, large = _spec(), _spec(task=TaskSpec(p=23, train_size=500))
    assert member_bytes(large) > member_bytes(small)
    budget = int(3 * member_bytes(large) / MEMORY_FRACTION)
    assert members_that_fit([small, large], torch.device("cpu"), budget) == 3
    assert members_that_fit([small], torch.device("cpu"), budget) > 3
    assert members_that_fit([large], torch.device("cpu"), 1) == 1  # never fewer than one
    # the methods' state: Grokfast's EMA or window of gradients, Muon's momentum
    ema, window = _spec(grad_filter={"kind": "ema"}), _spec(grad_filter={"kind": "ma", "window": 10})
    assert member_bytes(small) < member_bytes(ema) == member_bytes(_spec(optimizer={"kind": "muon"})) < member_bytes(window)


def test_a_pack_larger_than_memory_trains_in_chunks_each_exactly_as_alone():
    # With room for one member at a time, each member is an ensemble of one: the very computation
    # of train_run, so its series equal the lone run's bit for bit (a batched ensemble's do not in
    # float32, see the float64 fixture).
    alone = [MemorySink() for _ in MEMBERS]
    for spec, sink in zip(MEMBERS, alone):
        train_run(spec, sink)
    chunked = [MemorySink() for _ in MEMBERS]
    one_at_a_time = int(max(member_bytes(spec) for spec in MEMBERS) / MEMORY_FRACTION)
    results = train_ensemble(MEMBERS, chunked, memory_bytes=one_at_a_time)
    assert [r.final_step for r in results] == [40, 50, 40]
    assert [a.series for a in alone] == [c.series for c in chunked]
