"""The analysis of a method_comparison (engine/kinds/method_comparison.py): steps to generalise per
configuration, each side's best, and the method's speed-up over the baseline, tuned and untuned.

A run's steps to generalise is its first evaluated step with test accuracy at or above the
analysis' `generalised_acc` (0.95 by default): the run analysis' `generalisation_step`. A run that
never gets there is censored at its step budget (it would have needed at least that many). A
configuration (side, learning rate, weight decay) is summarised by the median over its seeds; the
median is itself censored (a lower bound) when the censored seeds reach the middle.

The speed-up is the baseline's median steps over the method's. Tuned: each side at its best
configuration (fewest median steps); untuned: both at the base spec's own learning rate and weight
decay. Its 95% interval is a bootstrap over seeds: each resample draws seeds with replacement,
the same draw for every configuration of both sides (seed s trains both sides on the same data and
initialisation, so they pair), and for the tuned speed-up picks each side's best again inside the
resample, so the interval carries the luck of picking a best among many configurations. A seeded
generator makes it deterministic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from engine.kinds.method_comparison import SIDES, MethodComparisonExperiment, untuned_point
from groklab.analysis_models import Configuration, MethodComparison, SeedSteps, Side, SpeedUp
from groklab.analysis import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, RunRecord, Thresholds, run_weight_decay
from groklab.store.models import Experiment


def seed_steps(run: RunRecord) -> SeedSteps:
    """A succeeded run's steps to generalise, censored at its budget."""
    assert run.analysis is not None
    step = run.analysis.generalisation_step
    budget = run.spec.total_steps
    return SeedSteps(seed=run.spec.seed, run_id=run.id, steps=budget if step is None else step, censored=step is None)


def median_is_censored(censored_seeds: int, seeds: int) -> bool:
    """Whether the median of `seeds` values is a lower bound when `censored_seeds` of them are
    censored (they sort last): the upper middle value is then censored."""
    return seeds > 0 and censored_seeds > (seeds - 1) // 2


def configurations(records: Sequence[RunRecord], untuned: tuple[float, float]) -> list[Configuration]:
    """Every (side, learning rate, weight decay) the runs were planned at, in planning order."""
    groups: dict[tuple[str, float, float], list[RunRecord]] = defaultdict(list)
    for run in sorted(records, key=lambda r: r.index):
        groups[(run.role, run.spec.optimizer.lr, run_weight_decay(run.spec))].append(run)
    found = []
    for (side, lr, wd), runs in groups.items():
        steps = [seed_steps(run) for run in runs if run.analysis is not None]
        values = [s.steps for s in steps]
        found.append(Configuration(
            side=side, learning_rate=lr, weight_decay=wd, untuned=math.isclose(lr, untuned[0]) and math.isclose(wd, untuned[1]),
            budget=max(run.spec.total_steps for run in runs), seeds=steps,
            median_steps=float(np.median(values)) if values else None,
            censored=median_is_censored(sum(s.censored for s in steps), len(steps)),
        ))  # fmt: skip
    return found


def best_index(medians: np.ndarray, means: np.ndarray) -> int | None:
    """The configuration with the fewest median steps; among equal medians (several censored at
    the budget, say) the fewest mean steps, then the first. None if none has a median."""
    if np.all(np.isnan(medians)):
        return None
    tied = np.flatnonzero(medians == np.nanmin(medians))
    return int(tied[np.argmin(means[tied])])


def _seed_table(configs: Sequence[Configuration], seeds: Sequence[int]) -> np.ndarray:
    """steps[configuration, seed], NaN where that run has not succeeded."""
    table = np.full((len(configs), len(seeds)), np.nan)
    column = {seed: j for j, seed in enumerate(seeds)}
    for i, config in enumerate(configs):
        for s in config.seeds:
            table[i, column[s.seed]] = s.steps
    return table


def _summaries(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's median and mean over its seeds (NaN for a row with none)."""
    medians, means = np.full(table.shape[0], np.nan), np.full(table.shape[0], np.nan)
    for i, row in enumerate(table):
        if not np.all(np.isnan(row)):
            medians[i], means[i] = np.nanmedian(row), np.nanmean(row)
    return medians, means


def bootstrap_speed_up(
    baseline: np.ndarray, method: np.ndarray, *, pick_best: bool, resamples: int = BOOTSTRAP_RESAMPLES
) -> list[float] | None:
    """95% interval of baseline / method median steps, resampling the seeds (the columns, paired
    across every row of both tables) with replacement; `pick_best` takes each side's best row
    inside every resample, else each table has one row. None when no resample gives a ratio."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    seeds = baseline.shape[1]
    ratios = []
    for _ in range(resamples):
        draw = rng.integers(0, seeds, seeds)
        (b, b_means), (m, m_means) = _summaries(baseline[:, draw]), _summaries(method[:, draw])
        if pick_best:
            ib, im = best_index(b, b_means), best_index(m, m_means)
            if ib is None or im is None:
                continue
            b, m = b[ib : ib + 1], m[im : im + 1]
        if not np.isnan(b[0]) and not np.isnan(m[0]) and m[0] > 0:
            ratios.append(b[0] / m[0])
    if not ratios:
        return None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


def speed_up(baseline: Configuration | None, method: Configuration | None, interval: list[float] | None) -> SpeedUp:
    if baseline is None or method is None or baseline.median_steps is None or method.median_steps is None:
        return SpeedUp(baseline=baseline, method=method, speed_up=None, interval=None, bound=None,
                       reason="needs a succeeded run on each side")  # fmt: skip
    bound = {(False, False): None, (True, False): "lower", (False, True): "upper", (True, True): "unknown"}
    which = bound[(baseline.censored, method.censored)]
    why = "both medians are censored at the budget (lower bounds): their ratio bounds nothing"
    return SpeedUp(
        baseline=baseline, method=method, speed_up=baseline.median_steps / method.median_steps, interval=interval,
        bound=which, reason=why if which == "unknown" else None,
    )  # fmt: skip


def compare(records: Sequence[RunRecord], untuned: tuple[float, float], level: float) -> MethodComparison:
    """The comparison over the runs' records (their analyses at `level`)."""
    configs = configurations(records, untuned)
    seeds = sorted({s.seed for c in configs for s in c.seeds})
    by_side = {side: [c for c in configs if c.side == side] for side in SIDES}
    tables = {side: _seed_table(by_side[side], seeds) for side in SIDES}
    best: dict[Side, Configuration | None] = {}
    for side in SIDES:
        index = best_index(*_summaries(tables[side]))
        best[side] = None if index is None else by_side[side][index]  # type: ignore[index]
    own = {side: next((i for i, c in enumerate(by_side[side]) if c.untuned), None) for side in SIDES}
    tuned_interval = untuned_interval = None
    if seeds and all(len(by_side[side]) for side in SIDES):
        tuned_interval = bootstrap_speed_up(tables["baseline"], tables["method"], pick_best=True)
        if own["baseline"] is not None and own["method"] is not None:
            b, m = own["baseline"], own["method"]
            untuned_interval = bootstrap_speed_up(tables["baseline"][b : b + 1], tables["method"][m : m + 1], pick_best=False)
    untuned_configs = {side: None if own[side] is None else by_side[side][own[side]] for side in SIDES}
    return MethodComparison(
        level=level, configurations=configs, best=best,
        tuned=speed_up(best["baseline"], best["method"], tuned_interval),
        untuned=speed_up(untuned_configs["baseline"], untuned_configs["method"], untuned_interval),
        resamples=BOOTSTRAP_RESAMPLES,
    )  # fmt: skip


def analysis_section(experiment: Experiment, records: Sequence[RunRecord], thresholds: Thresholds) -> dict[str, MethodComparison]:
    """The experiment analysis' `method_comparison` section (its models: groklab/analysis_models.py)."""
    request = MethodComparisonExperiment.model_validate(experiment.spec)
    return {"method_comparison": compare(records, untuned_point(request), thresholds.generalised_acc)}
