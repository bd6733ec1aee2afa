"""Submits an experiment file to a running groklab over HTTP, waits for it and prints what a GPU
service check reports: wall time from POST to every run finished, progress as it goes, and the
experiment analysis (mean final test accuracy per D and weight decay, D_crit with its interval).

`python -m benchmarks.gpu_service_check examples/paper/ungrokking.json [--seeds N] [--deadline S]`
(benchmarks/gpu_service_check.sh starts the service on a GPU host and runs this against it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

from groklab.client import Client


FINAL = {"succeeded", "failed", "cancelled"}


def expected_runs(client: Client, spec: dict) -> int:
    """The runs the experiment makes in all: the plan's, and an ungrokking's phase-2 forks (made
    when their parents finish) counted from its grid."""
    planned = client.plan(spec)["runs"]
    if spec.get("kind") == "ungrokking":
        forks = len(spec["subset_sizes"]) * len(spec.get("weight_decays") or [None])
        planned = max(planned, len(spec["seeds"]) * (1 + forks))
    return planned


def _wait(client: Client, experiment_id: int, expected: int, started: float, deadline: float) -> dict[str, int]:
    """Polls until `expected` runs have finished or the deadline passes; returns the status counts."""
    last_print = 0.0
    while True:
        experiment = client.experiment(experiment_id)
        counts = experiment.status_counts
        elapsed = time.monotonic() - started
        if sum(n for status, n in counts.items() if status in FINAL) >= expected or elapsed > deadline:
            return counts
        if elapsed - last_print >= 15:
            print(f"  {elapsed:6.1f} s: {json.dumps(counts, sort_keys=True)}", flush=True)
            last_print = elapsed
        time.sleep(1.0)


def _print_analysis(analysis: dict) -> None:
    print("mean final test accuracy by D and weight decay (role: phase-2 runs):")
    for curve in analysis["accuracy_vs_train_size"]:
        print(
            f"  {curve['role']:>8} wd {curve['weight_decay']:<4} D {curve['train_size']:>5}: {curve['mean']:.3f} (n={curve['n']})"
        )
    for role, estimate in analysis["d_crit"].items():
        pooled = estimate["pooled"]
        print(
            f"D_crit ({role}, pooled over weight decays): {pooled['d_crit']} interval {pooled['interval']} ({pooled['reason']})"
        )


def wait_for_api(url: str, seconds: float = 120.0) -> None:
    """Until the api answers /healthz (a service just started migrates and starts its workers first)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz did not answer within {seconds:.0f} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--seeds", type=int, default=None, help="keep the first N seeds (a part of the experiment)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds to wait before reporting what finished")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    if args.seeds is not None:
        spec["seeds"] = spec["seeds"][: args.seeds]
    wait_for_api(args.url)
    client = Client(args.url, timeout=60.0)
    expected = expected_runs(client, spec)
    started = time.monotonic()
    experiment = client.submit(spec)
    print(
        f"submitted experiment {experiment.id}: {len(experiment.run_ids)} runs now, {expected} in all, seeds {spec['seeds']}",
        flush=True,
    )
    counts = _wait(client, experiment.id, expected, started, args.deadline)
    wall = time.monotonic() - started
    print(f"wall time from POST to the end: {wall:.1f} s; runs by status: {counts}")
    _print_analysis(client.analysis(experiment.id))


if __name__ == "__main__":
    main()
