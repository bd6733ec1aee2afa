"""float32 against bf16-mixed (RunSpec.precision) on the paper's setup: does grokking notice?

`python -m benchmarks.precision [--seeds 2] [--steps 10000] [--train-fraction 0.3] [--p 113]` trains
the paper's model at P = 113 (AdamW, lr 1e-3, weight decay 1) once per seed in each precision, the
seeds of one precision as one ensemble, the two precisions in two processes of one thread each.
A run stops at its first evaluation (every 100 steps) with test accuracy >= 0.95. It prints, per
precision and seed, that step (or "-" if the budget ran out), the test accuracy there and the
training loss at step 300, then each precision's seconds per run-step on this machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from engine.sink import MemorySink
from engine.spec import PRECISIONS, PhaseSpec, RunSpec, StopCondition, TaskSpec
from engine.train import train_ensemble

EVAL_EVERY = 100
GENERALISED_ACC = 0.95


def train(
    precision: str, seeds: int, steps: int, train_fraction: float, p: int
) -> tuple[list[dict[int, float]], list[dict[int, float]], float]:
    """Each seed's test_acc and train_loss series, and seconds per run-step (one thread)."""
    torch.set_num_threads(1)
    specs = [
        RunSpec(
            task=TaskSpec(p=p, train_fraction=train_fraction), phases=[PhaseSpec(steps=steps)], seed=seed,
            eval_every=EVAL_EVERY, train_loss_every=EVAL_EVERY, precision=precision, device="cpu",
            stop_when=[StopCondition(metric="test_acc", at_least=GENERALISED_ACC, for_steps=0)],
        )
        for seed in range(seeds)
    ]  # fmt: skip
    sinks = [MemorySink() for _ in specs]
    start = time.perf_counter()
    results = train_ensemble(specs, sinks, device="cpu")
    run_steps = sum(result.final_step for result in results)
    return (
        [s.series["test_acc"] for s in sinks],
        [s.series["train_loss"] for s in sinks],
        (time.perf_counter() - start) / run_steps,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--train-fraction", type=float, default=0.3)
    parser.add_argument("--p", type=int, default=113, help="the modulus (the smoke test's is small)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with ProcessPoolExecutor(len(PRECISIONS)) as pool:
        futures = {p: pool.submit(train, p, args.seeds, args.steps, args.train_fraction, args.p) for p in PRECISIONS}
        outcomes = {p: future.result() for p, future in futures.items()}
    print("| precision | seed | first step with test accuracy >= 0.95 | test accuracy there | train loss at step 300 |")
    print("| --- | --- | --- | --- | --- |")
    for precision, (test_accs, train_losses, _) in outcomes.items():
        for seed, (test_acc, train_loss) in enumerate(zip(test_accs, train_losses)):
            step = next((s for s in sorted(test_acc) if test_acc[s] >= GENERALISED_ACC), None)
            at = "-" if step is None else f"{test_acc[step]:.3f}"
            print(
                f"| {precision} | {seed} | {'-' if step is None else f'{step:,}'} | {at} | {train_loss.get(300, float('nan')):.2e} |"
            )
    for precision, (_, _, seconds) in outcomes.items():
        print(f"{precision}: {seconds * 1e3:.1f} ms per run-step (one thread)")
    print(f"\n{datetime.date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"P={args.p}, train fraction {args.train_fraction}; wall time {time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
