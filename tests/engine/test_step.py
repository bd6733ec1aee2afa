"""A training step is a fixed, small set of kernels (a GPU step is launch-bound), traceable as one
graph (CUDA graph capture, torch.compile), and chunked rows train each member as it trains alone."""

import time

import pytest
import torch

from engine import train
from engine.op_count import OpCounter
from engine.sink import MemorySink
from engine.spec import OptimizerSpec, PhaseSpec, RunSpec, TaskSpec, TransformerSpec
from engine.train import Ensemble, batch_plan, chunk_width, size_classes, train_ensemble, train_run

from . import float64, single_cpu_thread  # noqa: F401  (float64: a fixture the tests ask for)

MAX_OPS_PER_STEP = 120  # 351 at P=113 before the flat buffer (549 with 2 size classes, 868 with 4)
BYTES_PER_STEP_BEFORE = 265e6  # at P=113, K=1, before the flat buffer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_cpu_thread():
        yield


def _ensemble(sizes: list[int], p: int = 113, pass_cost: float | None = None, **changes) -> Ensemble:
    specs = [
        RunSpec(task=TaskSpec(p=p, train_size=d), phases=[PhaseSpec(steps=1000)], device="cpu", seed=s, **changes)
        for s, d in enumerate(sizes)
    ]
    return Ensemble(specs, [MemorySink() for _ in specs], [None] * len(specs), torch.device("cpu"), pass_cost=pass_cost)


@pytest.mark.parametrize("precision", ["float32", "bf16-mixed"])
@pytest.mark.parametrize(
    "sizes",
    [[3830], [1000] * 4, [3830, 1500], [2000, 900, 400, 150]],
    ids=["K=1", "K=4", "2 size classes", "4 size classes"],
)
def test_a_step_runs_few_kernels_at_any_k_and_any_number_of_size_classes(sizes, precision):
    # Counted on the CPU for the step a GPU runs: there a forward pass costs ~100 kernel launches.
    # A train_loss every step: the count includes writing it to the ring.
    ensemble = _ensemble(sizes, pass_cost=train.PASS_COST_EXAMPLES["cuda"], train_loss_every=1, precision=precision)
    for member in ensemble.members:
        member.step = 100  # past the warm-up: the learning rates no longer change every step
    ensemble.train_step()
    layout = ensemble._batch_layout()
    assert len(layout.passes) == 1  # several size classes too: their examples in chunks, one pass
    assert (layout.member_rows is not None) == (len(size_classes(sizes)) > 1)
    with OpCounter() as counter:
        ensemble.train_step()
    assert counter.ops <= MAX_OPS_PER_STEP, counter.by_name
    if sizes == [3830]:  # the inputs and outputs of every op: 265 MB before (float32)
        assert counter.bytes < (200e6 if precision == "float32" else BYTES_PER_STEP_BEFORE / 2)


def test_the_batch_plan_pads_cuts_or_splits_by_cost():
    assert chunk_width([3830, 1500], row_cost=400) == 1915  # 3 rows of 1915 beat 2 of 3830 and 5 of 766
    assert batch_plan([500, 400, 300], row_cost=0, pass_cost=0) == [([0, 1, 2], 500)]  # within 2x: padded
    assert batch_plan([3000, 100], row_cost=10_000, pass_cost=0) == [([0, 1], 3000)]  # gathers cost more
    assert batch_plan([3000, 100], row_cost=400, pass_cost=0) == [([0], 3000), ([1], 100)]  # a pass per class
    assert batch_plan([3000, 100], row_cost=400, pass_cost=10**5) == [([0, 1], 1000)]  # one pass, 3 + 1 rows


@pytest.mark.parametrize("pass_cost", [0, 10**9], ids=["a pass per size class", "chunks"])
@pytest.mark.usefixtures("float64")
def test_every_batch_plan_trains_each_member_as_alone_with_a_small_loss_ring(monkeypatch, pass_cost):
    # Free gathered rows, so that sizes far apart get a pass each or rows of the smallest width, and
    # a ring of train losses that wraps every 5 steps: neither shows in any series.
    specs = [
        RunSpec(
            task=TaskSpec(p=23, train_size=size, data_seed=seed), phases=[PhaseSpec(steps=12)], eval_every=6,
            train_loss_every=1, seed=seed, device="cpu", optimizer=OptimizerSpec(lr=3e-3, warmup_steps=3 * seed),
        )
        for seed, size in enumerate([300, 120, 40])
    ]  # fmt: skip
    alone = [MemorySink() for _ in specs]
    for spec, sink in zip(specs, alone):
        train_run(spec, sink)
    monkeypatch.setattr(train, "ROW_COST_PARAMETERS_PER_EXAMPLE", 10**12)
    monkeypatch.setitem(train.PASS_COST_EXAMPLES, "cpu", pass_cost)
    monkeypatch.setattr(train, "LOSS_RING_SLOTS", 5)
    assert len(batch_plan([300, 120, 40], row_cost=0, pass_cost=pass_cost)) == (3 if pass_cost == 0 else 1)
    together = [MemorySink() for _ in specs]
    train_ensemble(specs, together)
    for a, b in zip(alone, together):
        assert set(a.series) == set(b.series)
        for name, points in a.series.items():
            assert points.keys() == b.series[name].keys(), name
            assert list(b.series[name].values()) == pytest.approx(list(points.values()), abs=1e-9), name


def test_the_step_body_compiles_to_one_graph_and_computes_the_eager_step():
    # fullgraph=True fails on any graph break: a host read, a data-dependent size, Tensor.backward.
    tiny = {"model": TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32)}
    eager, compiled = _ensemble([40, 15], p=11, **tiny), _ensemble([40, 15], p=11, **tiny)
    for ensemble in (eager, compiled):
        ensemble._set_hyperparameters()
    layout = compiled._batch_layout()
    start = time.perf_counter()
    step = torch.compile(compiled._step_body, fullgraph=True, backend="aot_eager")
    losses = step(layout, functional=True)
    seconds = time.perf_counter() - start
    torch.testing.assert_close(losses, eager._step_body(eager._batch_layout()))
    torch.testing.assert_close(compiled.flat, eager.flat)
    torch.testing.assert_close(compiled.optimizer.exp_avg_sq, eager.optimizer.exp_avg_sq)
    assert seconds < 30, f"compiling the step took {seconds:.1f} s"


def test_the_step_body_with_the_grokking_methods_compiles_to_one_graph():
    # Every method at once (Grokfast-EMA's ops are a subset of the MA ring's: in-place updates of
    # persistent state): still no host read, no data-dependent size, the eager step's numbers.
    methods = {
        "model": TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32), "loss": "stablemax",
        "grad_filter": {"kind": "ma", "window": 2}, "weight_norm": {"fixed": True},
        "optimizer": OptimizerSpec(kind="muon", orthogonal_gradients=True),
    }  # fmt: skip
    eager, compiled = _ensemble([40, 15], p=11, **methods), _ensemble([40, 15], p=11, **methods)
    for ensemble in (eager, compiled):
        ensemble._set_hyperparameters()
    step = torch.compile(compiled._step_body, fullgraph=True, backend="aot_eager")
    for _ in range(3):  # the filter's window fills at step 2
        torch.testing.assert_close(step(compiled._batch_layout(), functional=True), eager._step_body(eager._batch_layout()))
    torch.testing.assert_close(compiled.flat, eager.flat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.filterwarnings("error")  # a failed capture warns and trains eagerly: here it fails the test
def test_steps_replayed_as_cuda_graphs_train_as_eager_steps():
    # Two phases (a new layout, so a second capture) and a member of another size (its own pass).
    specs = [
        RunSpec(
            task=TaskSpec(p=23, train_size=size), phases=[PhaseSpec(steps=8), PhaseSpec(steps=8, train_set="subset", subset_size=40)],
            eval_every=4, train_loss_every=1, seed=seed, device="cuda",
        )
        for seed, size in enumerate([250, 60])
    ]  # fmt: skip
    eager, captured = [MemorySink() for _ in specs], [MemorySink() for _ in specs]
    train_ensemble(specs, eager)
    train_ensemble(specs, captured, capture=True)
    for a, b in zip(eager, captured):
        assert set(a.series) == set(b.series)
        for name, points in a.series.items():
            assert list(b.series[name].values()) == pytest.approx(list(points.values()), abs=1e-6), name
