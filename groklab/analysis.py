"""Reads the paper's quantities off metric series: per-run labels, accuracy vs D, D_crit, efficiency.

Pure functions over `{name: [[step, value], ...]}` series (as groklab.store.metric_reads.read_series
returns them) and run specs; nothing here touches the database or HTTP.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.experiments import DCritSearchExperiment
from engine.d_crit_bracket import ProbeResult, next_round
from engine.spec import RunSpec
from groklab.analysis_models import DCritSearch, ExperimentAnalysis, RunAnalysis, Thresholds
from groklab.lifecycle import CANCELLED, FAILED, FINISHED_STATUSES

Series = Mapping[str, Sequence[Sequence[float | int | None]]]
SERIES_NEEDED = ("train_acc", "test_acc", "train_loss", "param_norm", "phase", "restricted_loss")
CROSSING_LEVEL = 0.5
CONVERGED_EVALUATIONS = 5
"""A run's converged state is the median of its last this-many evaluations (one spikes)."""
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _points(series: Series, name: str) -> list[tuple[int, float]]:
    # Null values are non-finite points (a diverged run): they cannot cross any threshold.
    return [(int(s), float(v)) for s, v in series.get(name, []) if v is not None]


def _first_step_at_least(points: list[tuple[int, float]], level: float) -> int | None:
    return next((s for s, v in points if v >= level), None)


def _first_step_at_most(points: list[tuple[int, float]], level: float) -> int | None:
    return next((s for s, v in points if v <= level), None)


def _value_at(points: list[tuple[int, float]], step: int) -> float | None:
    """The last value logged at or before `step`."""
    before = [v for s, v in points if s <= step]
    return before[-1] if before else None


def last_phase_start(series: Series, spec: RunSpec) -> int | None:
    """The last step of the second-to-last phase (where the last phase starts); None for one phase.

    Read from the `phase` series, which for a forked run includes the parent's points; the spec's
    phase lengths are the fallback when no phase points were logged.
    """
    if len(spec.phases) < 2:
        return None
    phase = _points(series, "phase")
    last = len(spec.phases) - 1
    if phase:
        earlier = [s for s, v in phase if v < last]
        if earlier and any(v >= last for _, v in phase):
            return max(earlier)
    return sum(p.steps for p in spec.phases[:-1])


def run_weight_decay(spec: RunSpec) -> float:
    """The weight decay in force during the last phase."""
    last = spec.phases[-1].weight_decay
    return spec.optimizer.weight_decay if last is None else last


def continues_on_a_subset(spec: RunSpec) -> bool:
    """Whether the run's last phase trains on a subset D' of an earlier phase's set: ungrokking's
    phase 2, whose run inherits its parent's history up to the last phase's start."""
    return len(spec.phases) > 1 and spec.phases[-1].train_set == "subset"


def analyse_run(series: Series, spec: RunSpec, thresholds: Thresholds) -> RunAnalysis:
    """Milestones, final values and a label for one run (labels: see `label_run`).

    A run whose last phase is on a subset D' (ungrokking's phase 2) is judged by that phase: its
    label says what the phase did to the accuracy it started with, and its grokking_delay is that
    phase's own (None when it started generalised: there was nothing left to grok).
    """
    train_acc, test_acc = _points(series, "train_acc"), _points(series, "test_acc")
    boundary = last_phase_start(series, spec)
    at_boundary = _value_at(test_acc, boundary) if boundary is not None else None
    mem_step = _first_step_at_least(train_acc, thresholds.memorised_acc)
    gen_step = _first_step_at_least(test_acc, thresholds.generalised_acc)
    delay = gen_step - mem_step if mem_step is not None and gen_step is not None else None
    phase_two = continues_on_a_subset(spec)
    if phase_two and boundary is not None:
        phase_mem = _first_step_at_least([p for p in train_acc if p[0] >= boundary], thresholds.memorised_acc)
        phase_gen = _first_step_at_least([p for p in test_acc if p[0] >= boundary], thresholds.generalised_acc)
        started_generalised = at_boundary is not None and at_boundary >= thresholds.generalised_acc
        delay = None if started_generalised or phase_mem is None or phase_gen is None else phase_gen - phase_mem
    norm_step, norm = norm_at_loss(series, thresholds.loss_target)
    # Nanda et al.'s restricted loss (engine.progress_measures) falls as the Fourier circuit
    # forms, typically long before test accuracy jumps: the lead says by how many steps.
    circuit_step = _first_step_at_most(_points(series, "restricted_loss"), thresholds.circuit_formed_loss)
    final_norm = _points(series, "param_norm")
    result: dict[str, Any] = {
        "memorisation_step": mem_step,
        "generalisation_step": gen_step,
        "grokking_delay": delay,
        "circuit_formation_step": circuit_step,
        "circuit_lead_steps": gen_step - circuit_step if gen_step is not None and circuit_step is not None else None,
        "final_step": test_acc[-1][0] if test_acc else None,
        "final_train_acc": train_acc[-1][1] if train_acc else None,
        "final_test_acc": test_acc[-1][1] if test_acc else None,
        "max_test_acc": max(v for _, v in test_acc) if test_acc else None,
        "test_acc_at_memorisation": _value_at(test_acc, mem_step) if mem_step is not None else None,
        "last_phase_start_step": boundary,
        "test_acc_at_last_phase_start": at_boundary,
        "final_param_norm": final_norm[-1][1] if final_norm else None,
        "loss_target_step": norm_step,
        "param_norm_at_loss_target": norm,
        "converged_train_loss": _converged(_points(series, "train_loss")),
        "converged_param_norm": _converged(final_norm),
        "converged_train_acc": _converged(train_acc),
        "converged_test_acc": _converged(test_acc),
        "param_norm_drift": _drift(final_norm),
        "train_size": spec.final_train_size,
        "weight_decay": run_weight_decay(spec),
        "seed": spec.seed,
        "data_seed": spec.task.data_seed,
    }
    result["label"] = label_run(result, test_acc, thresholds, phase_two=phase_two)
    return RunAnalysis.model_validate(result)


def _converged(points: list[tuple[int, float]]) -> float | None:
    return float(np.median([v for _, v in points[-CONVERGED_EVALUATIONS:]])) if points else None


def _drift(points: list[tuple[int, float]]) -> float | None:
    # How far from settled the converged state is: a net whose norm still moves is read
    # mid-way (weight decay's pull on what the loss does not use takes ~1 / (lr * wd) steps).
    if not points or not points[-1][1]:
        return None
    quarter = next(v for s, v in points if s >= 0.75 * points[-1][0])
    return abs(points[-1][1] - quarter) / points[-1][1]


def label_run(result: Mapping[str, Any], test_acc: list[tuple[int, float]], t: Thresholds, *, phase_two: bool = False) -> str:
    """The first label whose rule holds, in this order:

    not_converged: train_acc never reached memorised_acc.
    For a run whose last phase is on a subset D' (phase_two) and which had generalised
    (test_acc >= generalised_acc) where that phase started, by its final test_acc:
        kept: still >= generalised_acc;
        partially_ungrokked: fell into [ungrokked_below, generalised_acc);
        ungrokked: fell below ungrokked_below.
    generalised_without_delay: test_acc reached generalised_acc by no_delay_factor x the
        memorisation step.
    grokked: test_acc reached generalised_acc later than that.
    semi_grokked: never generalised, but test_acc rose by >= semi_rise above its value at
        memorisation and ended in [semi_min, generalised_acc).
    memorised: everything else (memorised, test accuracy stayed low).
    """
    mem_step, gen_step = result["memorisation_step"], result["generalisation_step"]
    final = result["final_test_acc"]
    if mem_step is None:
        return "not_converged"
    at_boundary = result["test_acc_at_last_phase_start"]
    if phase_two and at_boundary is not None and at_boundary >= t.generalised_acc and final is not None:
        if final >= t.generalised_acc:
            return "kept"
        return "partially_ungrokked" if final >= t.ungrokked_below else "ungrokked"
    if gen_step is not None:
        return "generalised_without_delay" if gen_step <= t.no_delay_factor * mem_step else "grokked"
    at_mem = result["test_acc_at_memorisation"] or 0.0
    rise = max((v for s, v in test_acc if s >= mem_step), default=at_mem) - at_mem
    if final is not None and t.semi_min <= final < t.generalised_acc and rise >= t.semi_rise:
        return "semi_grokked"
    return "memorised"


def norm_at_loss(series: Series, target: float) -> tuple[int | None, float | None]:
    """param_norm at the first step where train_loss <= target (the next logged norm at or after it).

    Comparing norms at one train loss compares circuits at one logit level: the paper's efficiency.
    """
    loss = _points(series, "train_loss")
    step = next((s for s, v in loss if v <= target), None)
    if step is None:
        return None, None
    norm = next(((s, v) for s, v in _points(series, "param_norm") if s >= step), None)
    return (norm[0], norm[1]) if norm else (step, None)


def first_crossing(xs: Sequence[float], ys: Sequence[float], level: float) -> tuple[float | None, str | None]:
    """The x where ys first goes from below `level` to at-or-above it, walking up in x.

    Linear interpolation between the two neighbouring points; a point exactly at `level` after one
    below is the crossing itself. Returns (None, reason) when there is no such step.
    """
    if len(xs) < 2:
        return None, "fewer than two sizes"
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 < level <= y1:
            return x0 + (level - y0) / (y1 - y0) * (x1 - x0), None
    if all(y >= level for y in ys):
        return None, f"every size is at or above {level}"
    if all(y < level for y in ys):
        return None, f"every size is below {level}"
    return None, f"the curve never rises through {level} as D grows"


@dataclass(frozen=True)
class RunRecord:
    """What the experiment analysis needs of one run; `analysis` is None until it succeeded."""

    id: int
    index: int
    status: str
    role: str
    spec: RunSpec
    analysis: RunAnalysis | None
    search_round: int | None = None


def accuracy_by_size(runs: Sequence[RunRecord]) -> dict[tuple[str, float], dict[int, list[float]]]:
    """{(role, weight decay): {D: [final test acc of each seed]}} over analysed runs."""
    table: dict[tuple[str, float], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.analysis is None or run.analysis.final_test_acc is None:
            continue
        key = (run.role, run.analysis.weight_decay)
        table[key][run.analysis.train_size].append(run.analysis.final_test_acc)
    return table


def _curve(by_size: Mapping[int, list[float]]) -> tuple[list[int], list[float]]:
    sizes = sorted(by_size)
    return sizes, [float(np.mean(by_size[d])) for d in sizes]


def d_crit(
    by_size: Mapping[int, list[float]], resamples: int = BOOTSTRAP_RESAMPLES, level: float = CROSSING_LEVEL
) -> dict[str, Any]:
    """D where mean final test accuracy crosses `level` (0.5), with a bootstrap interval over seeds.

    Each resample draws, for every D independently, as many seeds as it has with replacement; the
    interval is the 2.5/97.5 percentiles of the resamples that cross (their share is reported).
    """
    sizes, means = _curve(by_size)
    estimate, reason = first_crossing(sizes, means, level)
    result: dict[str, Any] = {"d_crit": estimate, "reason": reason, "interval": None, "crossing_share": None}
    if estimate is None:
        return result
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = [np.asarray(by_size[d], dtype=float) for d in sizes]
    crossings = []
    for _ in range(resamples):
        sample = [float(v[rng.integers(0, len(v), len(v))].mean()) for v in values]
        x, _ = first_crossing(sizes, sample, level)
        if x is not None:
            crossings.append(x)
    result["crossing_share"] = len(crossings) / resamples
    if crossings:
        low, high = np.percentile(crossings, [2.5, 97.5])
        result["interval"] = [float(low), float(high)]
    return result


def weight_decay_collapse(curves: Mapping[float, Mapping[int, list[float]]]) -> dict[str, Any]:
    """The largest spread of the per-weight-decay mean accuracies at a D they share.

    The paper predicts the curves overlap (D_crit does not depend on weight decay): a small gap.
    """
    if len(curves) < 2:
        return {"max_gap": None, "train_size": None, "weight_decays": None, "reason": "fewer than two weight decays"}
    best: dict[str, Any] = {"max_gap": None, "train_size": None, "weight_decays": None, "reason": None}
    sizes = sorted({d for by_size in curves.values() for d in by_size})
    for d in sizes:
        means = {wd: float(np.mean(by_size[d])) for wd, by_size in curves.items() if d in by_size}
        if len(means) < 2:
            continue
        low, high = min(means, key=means.__getitem__), max(means, key=means.__getitem__)
        gap = means[high] - means[low]
        if best["max_gap"] is None or gap > best["max_gap"]:
            best.update(max_gap=gap, train_size=d, weight_decays=sorted([low, high]))
    if best["max_gap"] is None:
        best["reason"] = "no size is shared by two weight decays"
    return best


def norm_at_fixed_loss(points: Sequence[tuple[float, float]], loss: float) -> tuple[float | None, str | None]:
    """A circuit's parameter norm at train loss `loss`, read off a weight-decay sweep at one D.

    `points` are the sweep's converged (train loss, norm) pairs: more weight decay gives a smaller
    net with a higher loss. A least-squares line of norm against log10(loss) through them, read at
    `loss` (one noisy run bends it less than joining neighbours would); None with a reason when
    fewer than two distinct losses or `loss` outside their range (no extrapolation).
    """
    usable = [(math.log10(value), n) for value, n in points if value is not None and n is not None and value > 0]
    if len({x for x, _ in usable}) < 2:
        return None, "needs two runs with different converged losses"
    xs, ys = np.array([x for x, _ in usable]), np.array([y for _, y in usable])
    target = math.log10(loss)
    if not xs.min() <= target <= xs.max():
        return None, f"train loss {loss:g} is outside the sweep's converged losses [{10 ** xs.min():.3g}, {10 ** xs.max():.3g}]"
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept + slope * target), None


def efficiency(runs: Sequence[RunRecord], thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Each circuit's parameter norm at one train loss vs D (the paper's Fig. 3), and their crossing.

    The paper compares converged circuits. C_mem: random-label runs (nothing to generalise), each
    counted once it fits its training set (converged train_acc >= memorised_acc). C_gen: runs on
    real labels, each counted once it has generalised (converged test_acc >= generalised_acc); a
    run that still memorises says nothing about C_gen. A run's converged (train loss, norm) is the
    median of its last evaluations; at each D the weight-decay sweep's points give the norm at
    `efficiency_loss` (norm_at_fixed_loss). C_mem's norm grows with D, C_gen's does not: the D
    where the memorising curve rises through the generalising one (held flat outside its sizes)
    is a second D_crit estimate. Each sweep point carries its run's param_norm_drift (and each size
    the largest): the estimate is only as good as the runs had settled.
    """
    t = thresholds or Thresholds()
    points: dict[str, dict[int, list[tuple[float, float]]]] = {"memorise": defaultdict(list), "generalise": defaultdict(list)}
    drifts: dict[str, dict[int, list[float | None]]] = {"memorise": defaultdict(list), "generalise": defaultdict(list)}
    excluded: list[dict[str, Any]] = []
    for run in runs:
        a = run.analysis
        if a is None:
            continue
        group = "memorise" if run.spec.task.random_labels else "generalise"
        if group == "memorise" and (a.converged_train_acc or 0.0) < t.memorised_acc:
            excluded.append({"run_id": run.id, "reason": "has not memorised its training set"})
        elif group == "generalise" and (a.converged_test_acc or 0.0) < t.generalised_acc:
            excluded.append({"run_id": run.id, "reason": "has not generalised"})
        else:
            points[group][a.train_size].append((a.converged_train_loss, a.converged_param_norm))
            drifts[group][a.train_size].append(a.param_norm_drift)
    curves: dict[str, list[dict[str, Any]]] = {}
    for group, by_size in points.items():
        curves[group] = []
        for d, pairs in sorted(by_size.items()):
            norm, why = norm_at_fixed_loss(pairs, t.efficiency_loss)
            moved = [x for x in drifts[group][d] if x is not None]
            curves[group].append({"train_size": d, "param_norm_at_loss": norm, "n": len(pairs), "reason": why,
                                  "max_param_norm_drift": max(moved) if moved else None,
                                  "sweep": [{"train_loss": loss, "param_norm": n, "param_norm_drift": x}
                                            for (loss, n), x in sorted(zip(pairs, drifts[group][d]), key=lambda p: p[0])]})  # fmt: skip
    result: dict[str, Any] = {"loss": t.efficiency_loss, **curves, "excluded": excluded, "d_crit": None, "reason": None}
    mem = [(c["train_size"], c["param_norm_at_loss"]) for c in curves["memorise"] if c["param_norm_at_loss"] is not None]
    gen = [(c["train_size"], c["param_norm_at_loss"]) for c in curves["generalise"] if c["param_norm_at_loss"] is not None]
    if not mem or not gen:
        result["reason"] = "needs converged circuits of both kinds with a norm at the loss (see each size's reason)"
        return result
    gen_sizes, gen_norms = [d for d, _ in gen], [n for _, n in gen]
    gap = [n - float(np.interp(d, gen_sizes, gen_norms)) for d, n in mem]
    result["d_crit"], reason = first_crossing([d for d, _ in mem], gap, 0.0)
    if reason is not None:
        result["reason"] = f"norm gap (memorise minus generalise): {reason}"
    return result


def analyse_experiment(runs: Sequence[RunRecord], thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Accuracy vs D, D_crit, weight-decay collapse and efficiency over the runs that succeeded."""
    table = accuracy_by_size(runs)
    curves = [
        {
            "role": role,
            "weight_decay": wd,
            "train_size": d,
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for (role, wd), by_size in sorted(table.items())
        for d, v in sorted(by_size.items())
    ]
    by_role: dict[str, dict[float, dict[int, list[float]]]] = defaultdict(dict)
    for (role, wd), by_size in table.items():
        by_role[role][wd] = by_size
    estimates, collapse = {}, {}
    for role, per_wd in sorted(by_role.items()):
        pooled: dict[int, list[float]] = defaultdict(list)
        for by_size in per_wd.values():
            for d, v in by_size.items():
                pooled[d].extend(v)
        estimates[role] = {
            "pooled": d_crit(pooled),
            "by_weight_decay": [{"weight_decay": wd, **d_crit(per_wd[wd])} for wd in sorted(per_wd)],
        }
        collapse[role] = weight_decay_collapse(per_wd)
    missing = [run.id for run in runs if run.status not in FINISHED_STATUSES]
    return {
        "complete": not missing,
        "missing_run_ids": missing,
        "excluded_run_ids": [run.id for run in runs if run.status in (FAILED, CANCELLED)],
        "analysed_runs": sum(run.analysis is not None for run in runs),
        "accuracy_vs_train_size": curves,
        "d_crit": estimates,
        "weight_decay_collapse": collapse,
        "efficiency": efficiency(runs, thresholds),
        "seeds": _seeds_used(runs),
        "runs": [run_row(run) for run in runs],
    }


def search(request: DCritSearchExperiment, runs: Sequence[RunRecord], *, ended: bool) -> DCritSearch:
    """A d_crit_search's state: the current bracket, the estimate over its probes with its
    interval over seeds, every probed size by round, why it ended, and its run-steps beside those
    of a geometric grid over the same bracket that reaches the same tolerance."""
    probes = [
        ProbeResult(run.analysis.train_size, run.search_round or 1, run.analysis.final_test_acc)
        for run in runs
        if run.role == "probe" and run.analysis is not None and run.analysis.final_test_acc is not None
    ]
    by_size: dict[int, list[float]] = defaultdict(list)
    by_round: dict[tuple[int, int], list[float]] = defaultdict(list)
    for probe in probes:
        by_size[probe.train_size].append(probe.final_test_acc)
        by_round[(probe.round, probe.train_size)].append(probe.final_test_acc)
    plan = next_round(
        request.low, request.high, probes, level=request.level, relative_tolerance=request.relative_tolerance,
        probes_per_round=request.probes_per_round, runs_per_size=len(request.seeds), runs_so_far=len(runs),
        max_runs=request.max_runs,
    )  # fmt: skip
    low, high = plan.bracket
    probe_runs = [run for run in runs if run.role == "probe"]
    # A probe's own steps: phase 2's on the ungrokking side (phase 1 is trained once per seed).
    probe_steps = [run.spec.phases[-1].steps if request.side == "ungrokking" else run.spec.total_steps for run in probe_runs]
    grid_sizes = math.floor(math.log(request.high / request.low) / math.log(1 + request.relative_tolerance)) + 2
    return DCritSearch.model_validate(
        {
            "side": request.side,
            "level": request.level,
            "bracket": [low, high],
            "bracket_ratio": high / low,
            "ended": ended,
            "end_reason": plan.ended if ended else None,
            "rounds": max((p.round for p in probes), default=0),
            "estimate": d_crit(by_size, level=request.level),
            "probes": [
                {"round": r, "train_size": d, "mean_final_test_acc": float(np.mean(v)), "n": len(v)}
                for (r, d), v in sorted(by_round.items())
            ],
            "assumed": f"low {request.low} fails and high {request.high} generalises; they are not trained",
            "probe_runs": len(probe_runs),
            "probe_run_steps": sum(probe_steps),
            "grid_at_same_tolerance": {
                "sizes": grid_sizes,
                "runs": grid_sizes * len(request.seeds),
                "run_steps": grid_sizes * len(request.seeds) * (max(probe_steps) if probe_steps else 0),
            },
        }
    )


def experiment_analysis(
    experiment_id: int, runs: Sequence[RunRecord], thresholds: Thresholds, sections: Mapping[str, Any]
) -> ExperimentAnalysis:
    """The experiment analysis as the API returns it: analyse_experiment's, the thresholds it used
    and the sections of the experiment's kind (groklab/kinds.py)."""
    body = {"experiment_id": experiment_id, "thresholds": thresholds.model_dump(), **analyse_experiment(runs, thresholds)}
    return ExperimentAnalysis.model_validate(body | dict(sections))


def _seeds_used(runs: Sequence[RunRecord]) -> dict[str, Any]:
    data = sorted({run.spec.task.data_seed for run in runs})
    return {"model": sorted({run.spec.seed for run in runs}), "data": data, "data_varied": len(data) > 1}


RUN_ROW_FIELDS = (
    "id index status role search_round seed data_seed train_size weight_decay label memorisation_step generalisation_step "
    "grokking_delay circuit_formation_step circuit_lead_steps total_steps final_step final_train_acc final_test_acc max_test_acc test_acc_at_last_phase_start "
    "final_param_norm param_norm_at_loss_target"
).split()


def run_row(run: RunRecord) -> dict[str, Any]:
    """One flat row per run; the analysis fields are null until the run succeeded."""
    row: dict[str, Any] = {
        "id": run.id,
        "index": run.index,
        "status": run.status,
        "role": run.role,
        "search_round": run.search_round,
        "seed": run.spec.seed,
        "data_seed": run.spec.task.data_seed,
        "train_size": run.spec.final_train_size,
        "weight_decay": run_weight_decay(run.spec),
        "total_steps": run.spec.total_steps,
    }
    for name in RUN_ROW_FIELDS:
        if name not in row:
            row[name] = getattr(run.analysis, name) if run.analysis else None
    return row


def rows_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str] = RUN_ROW_FIELDS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return out.getvalue()
