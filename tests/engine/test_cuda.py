"""On a GPU the engine computes what it computes on the CPU, waits for the GPU only where it must,
and the CI grokking run groks. Skipped where there is no GPU (CI); on a GPU host `pytest -m cuda
tests/engine` runs these with the CUDA cases of the equivalence tests (ensemble = lone runs, resume
= straight run, shortcut = all positions)."""

import json
from pathlib import Path

import pytest
import torch

from engine.device import configure_tf32
from engine.host_reads import cuda_syncs
from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec
from engine.train import train_ensemble, train_run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Two phases (a second layout), minibatches in the first: the paths a run of the paper's kinds takes.
SPEC = dict(
    task=TaskSpec(p=23, train_size=250),
    phases=[PhaseSpec(steps=40), PhaseSpec(steps=20, train_set="subset", subset_size=100)],
    eval_every=10, train_loss_every=1, seed=4,
)  # fmt: skip


def _series(device: str, dtype: torch.dtype, precision: str = "float32") -> dict[str, dict[int, float]]:
    torch.set_default_dtype(dtype)
    try:
        sink = MemorySink()
        train_run(RunSpec(**SPEC, device=device, precision=precision), sink)
        return sink.series
    finally:
        torch.set_default_dtype(torch.float32)


def _differences(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> dict[str, float]:
    assert set(a) == set(b)
    worst = {}
    for name, points in a.items():
        assert points.keys() == b[name].keys(), name
        worst[name] = max(abs(value - b[name][step]) for step, value in points.items())
    return worst


def test_float64_on_cuda_equals_the_cpu_to_1e_9():
    worst = _differences(_series("cpu", torch.float64), _series("cuda", torch.float64))
    print("float64, largest |cuda - cpu| per series:", worst)
    assert max(worst.values()) <= 1e-9, worst


def test_float32_on_cuda_stays_close_to_the_cpu_without_tf32():
    configure_tf32(False)
    cpu, cuda = _series("cpu", torch.float32), _series("cuda", torch.float32)
    print("float32, largest |cuda - cpu| per series over the run:", _differences(cpu, cuda))
    # Sums run in another order on the GPU and AdamW amplifies the last-bit differences step by step,
    # so the bound is on the start: the same initial model's losses to 1e-5 and, ten steps on, losses
    # to 1e-3 and accuracies to one example in a hundred.
    for step, loss_bound in ((0, 1e-5), (10, 1e-3)):
        for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
            bound = 1e-2 if name.endswith("acc") else loss_bound
            assert abs(cpu[name][step] - cuda[name][step]) <= bound, (name, step, cpu[name][step], cuda[name][step])


def test_bf16_mixed_on_cuda_stays_close_to_the_cpu():
    """bfloat16's kernels differ by device (CUDA's GEMMs, the CPU's oneDNN): the start is the
    same float32 model, ten steps on the losses agree to bfloat16's rounding."""
    cpu, cuda = (_series(device, torch.float32, precision="bf16-mixed") for device in ("cpu", "cuda"))
    print("bf16-mixed, largest |cuda - cpu| per series over the run:", _differences(cpu, cuda))
    for step, loss_bound in ((0, 1e-5), (10, 2e-2)):
        for name in ("train_loss", "test_loss"):
            assert abs(cpu[name][step] - cuda[name][step]) <= loss_bound, (name, step, cpu[name][step], cuda[name][step])


def test_training_steps_wait_for_the_gpu_only_at_evaluations():
    from engine.train import Ensemble

    specs = [RunSpec(**SPEC, device="cuda").model_copy(update={"seed": s}) for s in range(4)]
    ensemble = Ensemble(specs, [MemorySink() for _ in specs], [None] * len(specs), torch.device("cuda"))
    for _ in range(3):  # the layout's first steps build it (and copy the batch plan once)
        ensemble.train_step()
    torch.cuda.synchronize()
    steps = cuda_syncs(lambda: [ensemble.train_step() for _ in range(5)])
    evaluation = cuda_syncs(lambda: ensemble.evaluate(list(ensemble.members)))
    print(f"host syncs: {steps} in 5 training steps, {evaluation} in one evaluation of 4 members")
    assert steps == 0
    assert evaluation <= 2


@pytest.mark.slow
def test_the_ci_grokking_example_groks_on_the_gpu():
    configure_tf32(True)  # as a worker runs it by default (GROKLAB_TF32)
    example = json.loads((EXAMPLES / "ci" / "grokking.json").read_text())
    base = {**example["base"], "device": "cuda"}
    specs = [
        RunSpec(**base, seed=seed, optimizer={"weight_decay": wd}) for wd in example["weight_decays"] for seed in example["seeds"]
    ]
    sinks = [MemorySink() for _ in specs]
    train_ensemble(specs, sinks)
    for spec, sink in zip(specs, sinks):
        accuracies = [sink.series["test_acc"][step] for step in sorted(sink.series["test_acc"])]
        print(f"weight decay {spec.optimizer.weight_decay}: test accuracy of the last 4 evaluations {accuracies[-4:]}")
        assert min(accuracies[-4:]) >= 0.95
