"""d_crit_search against a grid, on the CI ungrokking config, through a real server.

`python -m benchmarks.d_crit_search` starts `groklab up` (SQLite, filesystem broker, two
workers) in a temporary folder and submits, on P=47 with half the pairs (phase 1: 2,500 steps;
phase 2: 3,000 steps on D'):
- a d_crit_search, side ungrokking, bracket [50, 800], one seed, one probe a round,
  to the tolerance of the grid below (its adjacent sizes' ratio);
- the ungrokking grid of 7 geometric D' in [50, 800], forked from the search's own phase-1 run
  (the same net, so the two differ only in which D' they train).
It prints both D_crit estimates, the search's bracket, and the phase-2 run-steps of each (the
search's beside the grid's and beside a grid at the search's final bracket ratio). Both share two
workers, so the wall times are not a speed comparison; the run-steps are.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.experiments import geometric_sizes
from engine.d_crit_bracket import narrow
from groklab.client import Client

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH, GRID_SIZES, PHASE2_STEPS = 50, 800, 7, 3_000
BASE = {"task": {"p": 47, "train_fraction": 0.5}, "phases": [{"steps": 2500}], "eval_every": 50}
GRID_TOLERANCE = (HIGH / LOW) ** (1 / (GRID_SIZES - 1)) - 1  # the grid's adjacent ratio, minus 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(what)


def main() -> None:
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
        env.update(GROKLAB_TORCH_THREADS="1", GROKLAB_RECONCILE_SECONDS="2")
        server = subprocess.Popen(
            [sys.executable, "-m", "groklab.cli", "up", "--port", str(port), "--workers", "2", "--data-dir", data_dir],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = Client(f"http://127.0.0.1:{port}")
            _wait(lambda: _up(client), 120, "the server did not start")
            started = time.monotonic()
            search = client.submit({
                "kind": "d_crit_search", "side": "ungrokking", "low": LOW, "high": HIGH, "seeds": [0],
                "probes_per_round": 1, "relative_tolerance": GRID_TOLERANCE, "base": BASE,
                "phase2_steps": PHASE2_STEPS,
            })  # fmt: skip
            phase1 = next(r for r in client.runs(search) if r.role == "phase1")
            _wait(lambda: client.run(phase1.id).status == "succeeded", 1800, "phase 1 did not succeed")
            grid = client.submit({
                "kind": "ungrokking", "base": BASE, "phase1_run_id": phase1.id, "seeds": [0],
                "subset_sizes": geometric_sizes(LOW, HIGH, GRID_SIZES), "phase2_steps": PHASE2_STEPS,
            })  # fmt: skip
            result = _wait(lambda: (a := client.analysis(search))["search"]["ended"] and a, 3600, "the search did not end")
            search_done = time.monotonic() - started
            client.wait(grid, progress=False, timeout=3600)
            grid_done = time.monotonic() - started
            grid_analysis = client.analysis(grid)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    state = result["search"]
    grid_d_crit = grid_analysis["d_crit"]["phase2"]["pooled"]
    grid_runs = len(grid_analysis["runs"])
    low, high = state["bracket"]
    same_ratio_grid = math.floor(math.log(HIGH / LOW) / math.log(high / low)) + 2
    print(f"grid: D' {geometric_sizes(LOW, HIGH, GRID_SIZES)}: D_crit {grid_d_crit['d_crit']} ({grid_d_crit['reason']}), "
          f"{grid_runs} phase-2 runs, {grid_runs * PHASE2_STEPS:,} phase-2 run-steps, done {grid_done:.0f} s after the start")  # fmt: skip
    print(f"search: probes {[(p['round'], p['train_size'], round(p['mean_final_test_acc'], 3)) for p in state['probes']]}")
    print(f"search: bracket [{low}, {high}] (ratio {high / low:.3f}, the grid's adjacent ratio {1 + GRID_TOLERANCE:.3f}), "
          f"ended {state['end_reason']}, estimate {state['estimate']['d_crit']} ({state['estimate']['reason']}), "
          f"{state['probe_runs']} phase-2 runs, {state['probe_run_steps']:,} phase-2 run-steps, done {search_done:.0f} s after the start")  # fmt: skip
    # The grid measures D_crit to between its adjacent sizes either side of the level; its
    # D_crit is a straight line between those two, so the search's bracket is checked against both.
    grid_acc = {run["train_size"]: run["final_test_acc"] for run in grid_analysis["runs"]}
    grid_low, grid_high = narrow(LOW, HIGH, grid_acc, 0.5)
    print(f"grid: final test acc {[(d, round(a, 3)) for d, a in sorted(grid_acc.items())]}, bracket [{grid_low}, {grid_high}]")
    print(
        f"the search's bracket lies inside the grid's: {grid_low <= low and high <= grid_high}; "
        f"the grid's interpolated D_crit lies inside the search's bracket: {low <= (grid_d_crit['d_crit'] or 0) <= high}"
    )
    print(f"phase-2 run-steps, grid / search: {grid_runs * PHASE2_STEPS / state['probe_run_steps']:.2f}x; "
          f"a grid at the search's final ratio needs {same_ratio_grid} sizes: {same_ratio_grid / state['probe_runs']:.2f}x")  # fmt: skip


def _up(client: Client) -> bool:
    try:
        client.experiments(limit=1)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
