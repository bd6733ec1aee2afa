"""Training engine speed on the paper's configuration (P = 113, D = 3,830, 1-layer transformer, AdamW).

`python -m benchmarks.engine [--quick] [--device cpu|cuda] [--peak-tflops X] [--precision bf16-mixed]`
measures, in one
process and interleaved, the steps/s of the all-positions reference (benchmarks/reference_model.py)
and of the engine's single run, the run-steps/s of ensembles of K runs, memory, achieved FLOP/s,
the cost of evaluation and logging at the default interval, and the kernels (aten ops, counted by
engine.op_count) and bytes of one step for K = 1, 8 (and 64 without --quick) and with two
training-set sizes; on CUDA also the run-steps/s of steps replayed as CUDA graphs (capture=True).
--precision: the engine's runs (not the reference) with that RunSpec.precision.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.memory import members_that_fit
from engine.model import build_model
from engine.device import configure_tf32
from engine.host_reads import HostReads, cuda_syncs
from engine.op_count import OpCounter
from engine.sink import MemorySink
from engine.spec import PRECISIONS, PhaseSpec, RunSpec, TaskSpec
from engine.datasets import build_task
from engine.train import PASS_COST_EXAMPLES, Ensemble, resolve_device
from benchmarks.reference_model import reference_forward

SPEC = RunSpec(task=TaskSpec(p=113, train_size=3830), phases=[PhaseSpec(steps=10_000)])
# Dense TF32 tensor-core peaks by the vendors' datasheets (their larger figures assume 2:4 sparsity).
PEAK_TFLOPS = {"H100": 494.7, "H200": 494.7, "A100": 156.0}


def matmul_flops_per_step(spec: RunSpec) -> float:
    """The engine's matmul FLOPs for one full-batch step (forward x3 for forward + backward)."""
    m, v, d = spec.model, spec.task.vocab_size, spec.model.d_model
    examples = spec.task.resolved_train_size
    per_example = 2 * (2 * d * m.d_mlp + d * v)  # MLP in, MLP out, unembed at '='
    tables = 2 * (2 * (v + 1)) * (d * m.n_heads * m.d_head * 2 + d * m.n_heads)  # OV and score tables
    return 3 * (examples * per_example + tables)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Reference:
    """The all-positions forward with torch.optim.AdamW: the baseline a naive implementation pays."""

    def __init__(self, device: torch.device):
        self.model = build_model(SPEC).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
        data = build_task(SPEC.task)
        self.tokens = data.tokens[data.train_idx].to(device)
        self.targets = data.targets[data.train_idx].to(device)

    def step(self) -> None:
        loss = F.cross_entropy(reference_forward(self.model, self.tokens), self.targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _ensemble(k: int, device: torch.device, capture: bool = False, **fields: object) -> Ensemble:
    specs = [SPEC.model_copy(update={"seed": s, **fields}) for s in range(k)]
    return Ensemble(specs, [MemorySink() for _ in specs], [None] * k, device, capture=capture)


def count_step(train_sizes: list[int], device: torch.device) -> tuple[int, float]:
    """(kernels, bytes per member) of one step of an ensemble of these training-set sizes, past the
    warm-up and logging its train_loss, as a GPU runs it (its batch_plan), counted on `device`."""
    specs = [
        SPEC.model_copy(update={"seed": s, "task": SPEC.task.model_copy(update={"train_size": d}), "train_loss_every": 1})
        for s, d in enumerate(train_sizes)
    ]
    ensemble = Ensemble(specs, [MemorySink() for _ in specs], [None] * len(specs), device, pass_cost=PASS_COST_EXAMPLES["cuda"])
    for member in ensemble.members:
        member.step = SPEC.optimizer.warmup_steps
    ensemble.train_step()  # the first step of a layout builds it
    with OpCounter() as counter:
        ensemble.train_step()
    return counter.ops, counter.bytes / len(specs)


def count_host_reads(train_sizes: list[int]) -> tuple[int, int]:
    """Host reads (each a wait for the GPU on CUDA) of one step and of one evaluation of every
    member, for an ensemble of these training-set sizes, counted on the meta device, which runs the
    loop with no data (engine/host_reads.py; tests/engine/test_host_reads.py says why that proves it)."""
    meta = torch.device("meta")
    specs = [
        SPEC.model_copy(update={"seed": s, "task": SPEC.task.model_copy(update={"train_size": d}), "train_loss_every": 1})
        for s, d in enumerate(train_sizes)
    ]
    ensemble = Ensemble(specs, [MemorySink() for _ in specs], [None] * len(specs), meta, pass_cost=PASS_COST_EXAMPLES["cuda"])
    ensemble.train_step()  # the first step of a layout builds it
    with HostReads() as reads:
        ensemble.train_step()
        ensemble.evaluate(list(ensemble.members))
    return reads.within("Ensemble.train_step"), reads.within("Ensemble.evaluate")


def count_cuda_syncs(k: int, device: torch.device) -> tuple[float, int]:
    """Host-device synchronisations that torch's sync debug mode reports, per training step (mean of
    5, past the layout's first steps) and for one evaluation of all K members."""
    ensemble = _ensemble(k, device)
    for _ in range(3):
        ensemble.train_step()

    step_syncs = cuda_syncs(lambda: [ensemble.train_step() for _ in range(5)]) / 5
    return step_syncs, cuda_syncs(lambda: ensemble.evaluate(list(ensemble.members)))


FIG7 = Path(__file__).resolve().parents[1] / "examples" / "paper" / "ungrokking.json"


def project_fig7(device: torch.device, pack: int = 64) -> None:
    """The paper's Fig. 7 (examples/paper/ungrokking.json) projected on this device from measured
    steps and evaluations of its packs' shapes: phase 1 (one run per seed on the base task) as one
    pack, phase 2 (seeds x D' x weight decays) in packs of `pack`, the D' mixed as a pack holds them."""
    fig7 = json.loads(FIG7.read_text())
    phase1_steps, every = fig7["base"]["phases"][0]["steps"], fig7["base"]["eval_every"]
    base_task = SPEC.task.model_copy(update={"train_size": None, **fig7["base"]["task"]})

    def seconds(sizes: list[int | None], steps: int) -> float:
        specs = [
            SPEC.model_copy(
                update={"seed": s, "task": base_task if d is None else SPEC.task.model_copy(update={"train_size": d})}
            )
            for s, d in enumerate(sizes)
        ]
        ensemble = Ensemble(specs, [MemorySink() for _ in specs], [None] * len(specs), device)
        t_step = min(_time(ensemble.train_step, 10, device) for _ in range(2))
        t_eval = _time(lambda: ensemble.evaluate(list(ensemble.members)), 3, device)
        total = steps * t_step + (steps // every) * t_eval
        print(f"  Fig. 7 pack of {len(sizes):3d}: {t_step * 1e3:.2f} ms/step, {t_eval * 1e3:.1f} ms/evaluation -> {total:.1f} s")
        return total

    subsets, seeds = fig7["subset_sizes"], fig7["seeds"]
    phase2 = [subsets[i % len(subsets)] for i in range(len(seeds) * len(subsets) * len(fig7["weight_decays"]))]
    packs = [phase2[i : i + pack] for i in range(0, len(phase2), pack)]
    total = seconds([None] * len(seeds), phase1_steps)
    by_size: dict[int, float] = {}
    for members in packs:
        if len(members) not in by_size:
            by_size[len(members)] = seconds(members, fig7["phase2_steps"])
        total += by_size[len(members)]
    print(f"Fig. 7 projected on this device: {total:.0f} s of training and evaluation ({len(packs)} phase-2 packs of <= {pack})")


def _time(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of fn over `steps` calls, after one warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and K <= 8 (CPU: under 5 minutes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="the runs' RunSpec.precision")
    args = parser.parse_args()
    global SPEC
    SPEC = SPEC.model_copy(update={"precision": args.precision})
    device = resolve_device(args.device)
    configure_tf32(True)  # as a worker by default (GROKLAB_TF32)
    steps, rounds = (5, 3) if args.quick else (20, 5)
    # As memory allows: the sizes whose members fit in the device's free memory at once.
    fit = members_that_fit([SPEC], device)
    sizes = [k for k in ([1, 8] if args.quick else [1, 8, 64, 256] if device.type == "cuda" else [1, 8, 32, 128]) if k <= fit]

    reference, single = _Reference(device), _ensemble(1, device)
    t_ref, t_single = _single_run(reference, single, steps, rounds, device)
    speedups = _ensembles(reference, single, sizes, steps, device, _peak_tflops(args.peak_tflops, device))
    _evaluation(single, steps, rounds, device)
    if device.type == "cuda":
        _cuda_graphs(sizes, steps, t_ref, device)
        for k in sizes[:3]:
            step_syncs, eval_syncs = count_cuda_syncs(k, device)
            print(
                f"host syncs on CUDA (torch.cuda.set_sync_debug_mode), K={k}: {step_syncs} per step, {eval_syncs} per evaluation"
            )
        project_fig7(device)
    _kernels_and_host_reads(device, quick=args.quick)
    k_best = max(speedups)
    print(f"single-run speed-up: {t_ref / t_single:.1f}x, ensemble speed-up (K={k_best}): {speedups[k_best]:.1f}x")


def _single_run(reference: _Reference, single: Ensemble, steps: int, rounds: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step of the all-positions reference and of the engine's single run."""
    ref_times, single_times = [], []
    for _ in range(rounds):  # interleaved: load from other processes hits both alike
        ref_times.append(_time(reference.step, steps, device))
        single_times.append(_time(single.train_step, steps, device))
    t_ref, t_single = min(ref_times), min(single_times)
    print(
        f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), threads {torch.get_num_threads()}"
    )
    print(f"reference (all positions): {1 / t_ref:8.2f} steps/s")
    print(f"engine single run:         {1 / t_single:8.2f} steps/s   {t_ref / t_single:.2f}x reference")
    return t_ref, t_single


def _peak_tflops(given: float | None, device: torch.device) -> float | None:
    if given is None and device.type == "cuda":
        name = torch.cuda.get_device_name()
        return next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    return given


def _ensembles(
    reference: _Reference, single: Ensemble, sizes: list[int], steps: int, device: torch.device, peak: float | None
) -> dict[int, float]:
    """Run-steps per second of ensembles of each size; each one's speed-up over the reference."""
    flops = matmul_flops_per_step(SPEC)
    speedups = {}
    for k in sizes:
        ensemble = single if k == 1 else _ensemble(k, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = min(_time(ensemble.train_step, max(1, steps // max(1, k // 8)), device) for _ in range(2))
        t_ref_now = _time(reference.step, 2, device)
        rate = k / t
        speedups[k] = rate * t_ref_now
        achieved = flops * k / t
        fraction = f"{achieved / (peak * 1e12):.1%} of {peak:g} TFLOP/s" if peak else "peak unknown on this device"
        memory = (
            f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU peak"
            if device.type == "cuda"
            else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB max RSS (process)"
        )
        print(
            f"ensemble K={k:3d}: {rate:8.2f} run-steps/s   {t * 1e3:7.2f} ms/step   {speedups[k]:.2f}x reference   "
            f"{achieved / 1e9:.1f} GFLOP/s ({fraction})   {memory}"
        )
        del ensemble
    return speedups


def _evaluation(single: Ensemble, steps: int, rounds: int, device: torch.device) -> None:
    """Evaluation + logging at the default interval (DEFAULT_EVALUATIONS per run: every 20 steps of
    10,000), without and with the progress measures (on by default for add), interleaved."""
    every = SPEC.resolved_eval_every
    plain = _ensemble(1, device, progress_measures=False)
    plain_times, measured_times = [], []
    for _ in range(rounds):
        plain_times.append(_time(lambda: plain.evaluate(plain.members), max(1, steps // 2), device))
        measured_times.append(_time(lambda: single.evaluate(single.members), max(1, steps // 2), device))
    t_eval, t_measured = min(plain_times), min(measured_times)
    t_step = min(_time(single.train_step, steps, device) for _ in range(rounds))
    print(
        f"eval + log: {t_eval * 1e3:.1f} ms per eval, every {every} steps (the default) of {t_step * 1e3:.1f} ms: "
        f"{t_eval / (every * t_step):.1%} overhead (every 10 steps: {t_eval / (10 * t_step):.1%})"
    )
    print(
        f"progress measures: +{(t_measured - t_eval) * 1e3:.1f} ms per eval ({t_measured / t_eval:.2f}x the eval), "
        f"{(t_measured - t_eval) / (every * t_step):.1%} of training time at the default interval"
    )


def _cuda_graphs(sizes: list[int], steps: int, t_ref: float, device: torch.device) -> None:
    for k in sizes:
        captured = _ensemble(k, device, capture=True)
        t = min(_time(captured.train_step, max(2, steps // max(1, k // 8)), device) for _ in range(2))
        print(f"ensemble K={k:3d}, CUDA graphs: {k / t:8.2f} run-steps/s   {k / t * t_ref:.2f}x reference")
        del captured


def _kernels_and_host_reads(device: torch.device, *, quick: bool) -> None:
    """Kernels, bytes and host reads of one step, for lone runs, ensembles and two size classes."""
    d, small = SPEC.task.resolved_train_size, SPEC.task.resolved_train_size * 2 // 5  # two size classes
    cases = [[d], [d] * 8] + ([] if quick else [[d] * 64]) + [[d] * 4 + [small] * 4]
    for train_sizes in cases:
        ops, nbytes = count_step(train_sizes, device)
        step_reads, eval_reads = count_host_reads(train_sizes)
        classes = "" if len(set(train_sizes)) == 1 else f", D = {d} and {small} (2 size classes)"
        print(
            f"one {SPEC.precision} step as a GPU runs it, K={len(train_sizes)}{classes}: {ops} kernels (aten ops), "
            f"{nbytes / 1e6:.0f} MB per member-step, {step_reads} host reads per step, "
            f"{eval_reads} per evaluation of all members"
        )


if __name__ == "__main__":
    main()
