"""Today's grokking methods against AdamW, each tuned over the same grid: the method_comparison of
examples/ci/methods.json run once per method, in this process.

`python -m benchmarks.methods [--methods NAME ...] [--micro]`. For each method of METHODS the
request is examples/ci/methods.json with that method's overlay as `method`; the kind's own plan
(engine.kinds) makes its runs (both sides over lr x wd x seeds), the engine trains them as batched
ensembles (engine.train.train_ensemble: runs of one engine.packing key pack together), and the
experiment analysis' own functions (groklab.analysis.analyse_run per run, then
groklab.method_comparison.compare) give steps to 0.95, each side's best and the speed-ups with
their paired seed bootstrap. A run is trained once per distinct spec: the baseline side's plan is
the same for every method, so the AdamW grid trains once.

One change to the request, to fit the table in ~45 minutes of one core: `stop_when` holds for 0
steps instead of 200 (STOP_AFTER_STEPS), so a run stops at its first evaluation at 0.95. Steps to
0.95 is that first evaluation either way (training does not depend on when it stops), so every
figure is the one the full request gives; only the 200 confirming steps go.

It prints a markdown table, then the date, the machine (CPUs, torch) and the wall time.
`--micro` runs the same pipeline at P=7 for a few steps (the smoke test: tests/test_methods_benchmark.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.kinds import plan_experiment
from engine.kinds.base import PlannedRun, deep_merge
from engine.kinds.method_comparison import MethodComparisonExperiment, untuned_point
from engine.sink import MemorySink
from engine.train import train_ensemble
from groklab.analysis import RunRecord, analyse_run
from groklab.analysis_models import Configuration, MethodComparison, SpeedUp, Thresholds
from groklab.lifecycle import SUCCEEDED
from groklab.method_comparison import compare

REQUEST = Path(__file__).resolve().parents[1] / "examples" / "ci" / "methods.json"
STOP_AFTER_STEPS = 0
"""stop_when's for_steps here (the request's: 200); see the module's docstring."""
METHODS: dict[str, dict[str, Any]] = {
    # Lee et al. 2024's defaults (their README's EMA and MA recipes, as engine/spec.py's defaults).
    "Grokfast EMA": {"grad_filter": {"kind": "ema", "alpha": 0.98, "lamb": 2.0}},
    "Grokfast MA": {"grad_filter": {"kind": "ma", "window": 100, "lamb": 5.0}},
    # Prieto et al. 2025: StableMax cross-entropy (in float64, as they compute it), and ⊥Grad.
    "StableMax": {"loss": "stablemax"},
    "⊥Grad": {"optimizer": {"orthogonal_gradients": True}},
    # Liu et al. 2023: the weights' total norm held at its initial value. At the default scale that
    # is ~41 here, where AdamW's norm is while it generalises (35-47). Held at x8 (~330) or x0.5
    # (~21) no run generalised either (docs/benchmarks.md): those two are kept out of the default table.
    "Omnigrok (norm fixed)": {"weight_norm": {"fixed": True}},
    "Omnigrok (init x8, norm fixed)": {"model": {"init_scale": 8.0}, "weight_norm": {"fixed": True}},
    "Omnigrok (init x0.5, norm fixed)": {"model": {"init_scale": 0.5}, "weight_norm": {"fixed": True}},
    # Jordan et al. 2024 via torch.optim.Muon, momentum 0.95 (torch's default).
    "Muon": {"optimizer": {"kind": "muon"}},
    # Thilak et al. 2022: the slingshot depends on Adam's epsilon; a smaller one than torch's.
    "Adam eps 1e-12": {"optimizer": {"eps": 1e-12}},
    # Not a method: the step in bfloat16 (float32 weights, optimizer and loss), which should
    # change nothing here; the row says whether grokking notices the 8-bit mantissa.
    "bf16-mixed": {"precision": "bf16-mixed"},
}
DEFAULT_METHODS = [name for name in METHODS if "init x" not in name and name != "bf16-mixed"]
MICRO_BASE = {"task": {"p": 7, "train_fraction": 0.5}, "phases": [{"steps": 6}], "eval_every": 2,
              "model": {"kind": "transformer", "d_model": 8, "n_heads": 1, "d_head": 8, "d_mlp": 16}}  # fmt: skip


def comparison_request(overlay: dict[str, Any], base_change: dict[str, Any]) -> MethodComparisonExperiment:
    """examples/ci/methods.json with `overlay` as its method and `base_change` merged over its base."""
    data = json.loads(REQUEST.read_text())
    data["method"] = overlay
    data["base"] = deep_merge(data["base"], base_change)
    for condition in data["base"].get("stop_when", []):
        condition["for_steps"] = STOP_AFTER_STEPS
    return MethodComparisonExperiment.model_validate(data)


def train_missing(runs: Sequence[PlannedRun], trained: dict[str, MemorySink]) -> int:
    """Trains, as ensembles, the runs whose spec is not in `trained` (keyed by the spec's JSON);
    returns how many it trained."""
    missing = list({run.spec.model_dump_json(): run.spec for run in runs if run.spec.model_dump_json() not in trained}.items())
    sinks = [MemorySink() for _ in missing]
    train_ensemble([spec for _, spec in missing], sinks, device="cpu")
    trained.update({key: sink for (key, _), sink in zip(missing, sinks)})
    return len(missing)


def records(runs: Sequence[PlannedRun], trained: dict[str, MemorySink], thresholds: Thresholds) -> list[RunRecord]:
    """The runs as the experiment analysis reads them, each analysed from its trained series."""
    found = []
    for index, run in enumerate(runs):
        sink = trained[run.spec.model_dump_json()]
        series = {name: sink.points(name) for name in sink.series}
        found.append(RunRecord(id=index + 1, index=index, status=SUCCEEDED, role=run.role, spec=run.spec,
                               analysis=analyse_run(series, run.spec, thresholds)))  # fmt: skip
    return found


def _steps(config: Configuration | None) -> str:
    if config is None or config.median_steps is None:
        return "-"
    bound = ">=" if config.censored else ""
    return f"{bound}{config.median_steps:,.0f} (lr {config.learning_rate:g}, wd {config.weight_decay:g})"


def _speed_up(value: SpeedUp, interval: bool) -> str:
    if value.speed_up is None:
        return "-"
    sign = {"lower": ">=", "upper": "<=", "unknown": "?"}.get(value.bound or "", "")
    text = f"{sign}{value.speed_up:.2f}"
    if interval and value.interval is not None:
        text += f" [{value.interval[0]:.2f}, {value.interval[1]:.2f}]"
    return text


def _reached(comparison: MethodComparison) -> str:
    """Seeds at 0.95 of the method's best configuration, then over all its runs."""
    best = comparison.best["method"]
    runs = [s for c in comparison.configurations if c.side == "method" for s in c.seeds]
    at_best = "-" if best is None else f"{sum(not s.censored for s in best.seeds)}/{len(best.seeds)}"
    return f"{at_best} ({sum(not s.censored for s in runs)}/{len(runs)} runs)"


TABLE_HEAD = (
    "| method | overlay | median steps to 0.95, method's best | baseline's best | untuned speed-up | "
    "tuned speed-up [95% interval] | seeds at 0.95, method's best (all its runs) |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def table_row(name: str, overlay: dict[str, Any], comparison: MethodComparison) -> str:
    cells = [name, f"`{json.dumps(overlay)}`", _steps(comparison.best["method"]), _steps(comparison.best["baseline"]),
             _speed_up(comparison.untuned, interval=False), _speed_up(comparison.tuned, interval=True), _reached(comparison)]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def run(names: Sequence[str], base_change: dict[str, Any]) -> list[str]:
    """The table's rows, one per method, training each run once; prints progress as it goes."""
    trained: dict[str, MemorySink] = {}
    thresholds = Thresholds()
    rows = []
    for name in names:
        request = comparison_request(METHODS[name], base_change)
        runs = plan_experiment(request, max_runs=10_000)
        start = time.perf_counter()
        count = train_missing(runs, trained)
        comparison = compare(records(runs, trained, thresholds), untuned_point(request), thresholds.generalised_acc)
        rows.append(table_row(name, METHODS[name], comparison))
        print(f"{name}: trained {count} of its {len(runs)} runs in {time.perf_counter() - start:.0f} s\n{rows[-1]}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--micro", action="store_true", help="P=7, a tiny model, 6 steps: the pipeline only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = run(args.methods, MICRO_BASE if args.micro else {})
    print(TABLE_HEAD)
    print("\n".join(rows))
    print(f"\n{datetime.date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, 1 thread; wall time {time.perf_counter() - started:.0f} s, "
          f"CPU time {time.process_time() - cpu_started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
