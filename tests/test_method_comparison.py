"""method_comparison: its plan (sides x grid x seeds, overlays, bad input naming the field) and its
analysis on series computed here (steps to generalise censored at the budget, medians, each side's
best, the speed-ups and their paired bootstrap intervals)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from engine.experiments import ExperimentRequest, plan_experiment
from engine.kinds.method_comparison import MAX_GRID_VALUES, untuned_point
from engine.spec import SpecError
from groklab import analysis
from groklab.analysis_models import ExperimentAnalysis
from groklab.method_comparison import bootstrap_speed_up, compare, median_is_censored

REQUEST = TypeAdapter(ExperimentRequest)
BASE = {"task": {"p": 13, "train_fraction": 0.5}, "phases": [{"steps": 1000}], "eval_every": 10,
        "optimizer": {"lr": 0.003, "weight_decay": 1.0}}  # fmt: skip
COMPARISON = {
    "kind": "method_comparison", "base": BASE, "method": {"optimizer": {"betas": [0.9, 0.99]}},
    "grid": {"learning_rate": [0.001, 0.003], "weight_decay": [0.5, 1.0, 2.0]}, "seeds": [0, 1, 2],
}  # fmt: skip


def plan(data: dict[str, Any], max_runs: int = 500) -> list[Any]:
    return plan_experiment(REQUEST.validate_python(data), max_runs)


def test_the_plan_is_sides_by_grid_by_seeds_with_each_sides_overlay():
    runs = plan(COMPARISON)
    assert len(runs) == 2 * 2 * 3 * 3
    cells = {(r.role, r.spec.optimizer.lr, r.spec.optimizer.weight_decay, r.spec.seed) for r in runs}
    assert len(cells) == len(runs) and {r.role for r in runs} == {"baseline", "method"}
    for run in runs:
        assert run.spec.optimizer.betas == ((0.9, 0.99) if run.role == "method" else (0.9, 0.98))
        assert run.spec.task.data_seed == run.spec.seed and run.spec.total_steps == 1000 and run.parent_index is None
    # An overlay on the baseline too; without a grid each side trains at the base's own point only.
    runs = plan({**COMPARISON, "grid": None, "baseline": {"optimizer": {"warmup_steps": 0}}, "seeds": [4]})
    assert [(r.role, r.spec.optimizer.lr, r.spec.optimizer.weight_decay) for r in runs] == [
        ("baseline", 0.003, 1.0), ("method", 0.003, 1.0)
    ]  # fmt: skip
    assert [r.spec.optimizer.warmup_steps for r in runs] == [0, 10]
    assert untuned_point(REQUEST.validate_python(COMPARISON)) == (0.003, 1.0)


BAD = [
    ({"grid": {"learning_rate": [0.001], "weight_decay": [1.0]}}, "grid.learning_rate"),  # without the base's 0.003
    ({"grid": {"learning_rate": [0.003], "weight_decay": [0.1, 2.0]}}, "grid.weight_decay"),
    ({"grid": {"learning_rate": [0.003, 0.003], "weight_decay": [1.0]}}, "grid.learning_rate"),
    ({"method": {"optimizer": {"weight_decay": 0.1}}}, "method.optimizer.weight_decay"),
    ({"baseline": {"optimizer": {"lr": 0.1}}}, "baseline.optimizer.lr"),
    ({"method": {"phases": [{"steps": 10}]}}, "method.phases"),
    ({"method": {"task": {"p": 17}}}, "method.task"),
    ({"method": {"optimizer": {"betas": [1.5, 0.9]}}}, "method.optimizer.betas.0"),
    ({"method": {"no_such_option": True}}, "method.no_such_option"),
    ({"method": {"optimizer": 5}}, "method.optimizer"),
    ({"base": {**BASE, "phases": [{"steps": 100, "weight_decay": 0.1}]}}, "base.phases"),
    ({"seeds": list(range(100))}, "grid"),  # 2 x 6 x 100 = 1,200 runs, over the limit of 500
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_names_the_field(change: dict[str, Any], field: str):
    with pytest.raises(SpecError) as caught:
        plan({**COMPARISON, **change})
    assert caught.value.field == field


def test_the_grid_is_bounded_per_axis():
    too_many = [0.003 * (i + 1) for i in range(MAX_GRID_VALUES + 1)]
    with pytest.raises(ValidationError, match="grid.learning_rate"):
        REQUEST.validate_python({**COMPARISON, "grid": {"learning_rate": too_many, "weight_decay": [1.0]}})
    with pytest.raises(ValidationError, match="grid.weight_decay"):
        REQUEST.validate_python({**COMPARISON, "grid": {"learning_rate": [0.003], "weight_decay": []}})


# ---------------------------------------------------------------------------------------------
# The analysis, on runs of the real plan whose series are drawn here.

EVERY, BUDGET = 10, 1000


def series(rise_at: int | None) -> dict[str, list[list[float]]]:
    """Memorised from step 50; test accuracy ramps linearly from 0.1 to 1.0 over the 100 steps
    ending at `rise_at` (None: stays at 0.6, never generalising)."""
    steps = range(0, BUDGET + 1, EVERY)
    test = [0.6 if rise_at is None else min(1.0, max(0.1, 0.1 + 0.9 * (s - rise_at + 100) / 100)) for s in steps]
    return {"train_acc": [[s, 1.0 if s >= 50 else 0.2] for s in steps], "test_acc": [[s, v] for s, v in zip(steps, test)]}


def first_at_level(rise_at: int | None, level: float = 0.95) -> int | None:
    points = series(rise_at)["test_acc"]
    return next((int(s) for s, v in points if v >= level), None)


def records(rise: dict[tuple[str, float, float, int], int | None]) -> list[analysis.RunRecord]:
    """The plan's runs, each analysed on the series rising at rise[(side, lr, wd, seed)]."""
    out = []
    for index, run in enumerate(plan(COMPARISON)):
        spec = run.spec
        key = (run.role, spec.optimizer.lr, spec.optimizer.weight_decay, spec.seed)
        result = analysis.analyse_run(series(rise[key]), spec, analysis.Thresholds())
        out.append(analysis.RunRecord(id=100 + index, index=index, status="succeeded", role=run.role, spec=spec, analysis=result))
    return out


def grid_rises(baseline: dict[tuple[float, float], list[int | None]], method: dict[tuple[float, float], list[int | None]]):
    rises: dict[tuple[str, float, float, int], int | None] = {}
    for side, table in (("baseline", baseline), ("method", method)):
        for lr in (0.001, 0.003):
            for wd in (0.5, 1.0, 2.0):
                for seed, rise in zip((0, 1, 2), table.get((lr, wd), [None, None, None])):
                    rises[(side, lr, wd, seed)] = rise
    return rises


def test_steps_to_generalise_are_censored_at_the_budget_and_summarised_by_the_median():
    # 0.1 + 0.9 * 0.95 = 0.955 at step 400, 0.865 at 390: the first evaluated step at the level.
    assert first_at_level(405) == 400 and first_at_level(400) == 400 and first_at_level(None) is None
    rises = grid_rises(
        # The baseline at its own point (0.003, 1.0) is slow; tuned (0.001, 2.0) it is fast.
        {(0.003, 1.0): [800, 900, None], (0.001, 2.0): [300, 500, 400], (0.001, 0.5): [200, None, None]},
        {(0.003, 1.0): [400, 600, 500], (0.003, 2.0): [250, 350, 300]},
    )
    result = compare(records(rises), (0.003, 1.0), 0.95)
    configs = {(c.side, c.learning_rate, c.weight_decay): c for c in result.configurations}
    assert len(configs) == 12 and sum(c.untuned for c in configs.values()) == 2

    slow = configs[("baseline", 0.003, 1.0)]
    assert [(s.seed, s.steps, s.censored) for s in slow.seeds] == [
        (0, first_at_level(800), False), (1, first_at_level(900), False), (2, BUDGET, True)
    ]  # fmt: skip
    assert slow.median_steps == first_at_level(900) and not slow.censored and slow.budget == BUDGET
    mostly_censored = configs[("baseline", 0.001, 0.5)]
    assert mostly_censored.median_steps == BUDGET and mostly_censored.censored
    never = configs[("method", 0.001, 0.5)]
    assert never.median_steps == BUDGET and never.censored and all(s.censored for s in never.seeds)

    assert result.best["baseline"] == configs[("baseline", 0.001, 2.0)]
    assert result.best["method"] == configs[("method", 0.003, 2.0)]
    untuned, tuned = result.untuned, result.tuned
    assert untuned.speed_up == pytest.approx(first_at_level(900) / first_at_level(500))
    assert tuned.speed_up == pytest.approx(first_at_level(400) / first_at_level(300))
    assert untuned.bound is None and tuned.bound is None
    for speed in (untuned, tuned):
        low, high = speed.interval
        assert low <= speed.speed_up <= high
    # The published-style (untuned) speed-up shrinks against the tuned baseline.
    assert tuned.speed_up < untuned.speed_up
    # Deterministic: the same records give the same intervals.
    assert compare(records(rises), (0.003, 1.0), 0.95) == result


def test_a_censored_best_makes_the_speed_up_a_bound():
    rises = grid_rises({}, {(0.003, 1.0): [300, 400, 500]})  # the baseline never generalises
    result = compare(records(rises), (0.003, 1.0), 0.95)
    assert result.untuned.bound == "lower" and result.untuned.speed_up == pytest.approx(BUDGET / first_at_level(400))
    # Every baseline median censored: the best is the one whose seeds did best (fewest mean steps).
    one_seed = compare(
        records(grid_rises({(0.001, 1.0): [None, 300, None]}, {(0.003, 1.0): [300, 400, 500]})), (0.003, 1.0), 0.95
    )
    best = one_seed.best["baseline"]
    assert (best.learning_rate, best.weight_decay, best.median_steps, best.censored) == (0.001, 1.0, BUDGET, True)
    assert one_seed.tuned.bound == "lower" and one_seed.tuned.baseline == best
    nobody = compare(records(grid_rises({}, {})), (0.003, 1.0), 0.95)
    assert nobody.tuned.bound == "unknown" and nobody.tuned.speed_up == 1.0 and nobody.tuned.reason


def test_median_censoring_counts_the_middle():
    assert [median_is_censored(k, 3) for k in range(4)] == [False, False, True, True]
    assert [median_is_censored(k, 2) for k in range(3)] == [False, True, True]
    assert [median_is_censored(k, 4) for k in range(5)] == [False, False, True, True, True]


def test_the_bootstrap_pairs_seeds_across_sides():
    """Seeds vary tenfold, but the method halves every seed's steps: resampling the same seeds on
    both sides gives exactly 2; a draw that ignored the pairing would spread widely."""
    baseline = np.array([[100.0, 400.0, 1000.0, 250.0, 700.0]])
    assert bootstrap_speed_up(baseline, baseline / 2, pick_best=False) == pytest.approx([2.0, 2.0])
    rng = np.random.default_rng(1)
    unpaired = [np.median(rng.choice(baseline[0], 5)) / np.median(rng.choice(baseline[0] / 2, 5)) for _ in range(1000)]
    assert np.percentile(unpaired, 97.5) / np.percentile(unpaired, 2.5) > 3
    # Picking the best inside each resample: the interval of a method whose best row varies.
    method = np.array([[60.0, 190.0, 520.0, 120.0, 330.0], [50.0, 210.0, 480.0, 130.0, 360.0]])
    low, high = bootstrap_speed_up(baseline, method, pick_best=True)
    assert 1.8 < low <= high < 2.2
    # Every seed of one side missing: no ratio at all.
    assert bootstrap_speed_up(baseline, np.full((1, 5), np.nan), pick_best=False) is None


def test_the_report_section_reads_the_analysis_into_claims_a_table_and_a_figure():
    from groklab.client import report
    from groklab.client.report.figures import svg
    from groklab.client.report.method_comparison import SECTION

    def data(rises: dict) -> dict[str, report.ExperimentData]:
        # The experiment analysis as the API serves it, parsed as the client does.
        runs = records(rises)
        result = compare(runs, (0.003, 1.0), 0.95)
        served = analysis.experiment_analysis(1, runs, analysis.Thresholds(), {"method_comparison": result})
        parsed = ExperimentAnalysis.model_validate(json.loads(served.model_dump_json()))
        assert parsed.method_comparison == result and "search" not in served.model_dump(mode="json")
        return {"methods": report.ExperimentData("methods", 1, COMPARISON, [], parsed, {}, None)}

    # Untuned: the method halves or better every seed (interval above 1); tuned, the gap shrinks.
    faster = data(grid_rises(
        {(0.003, 1.0): [800, 900, None], (0.001, 2.0): [300, 500, 400]},
        {(0.003, 1.0): [400, 600, 500], (0.003, 2.0): [250, 350, 300]},
    ))  # fmt: skip
    assert [c.verdict for c in SECTION.claims(faster)] == [report.PASS, report.PASS]
    # A method slower than the untuned baseline on every seed fails the first claim.
    slower = data(grid_rises({(0.003, 1.0): [300, 400, 500]}, {(0.003, 1.0): [600, 700, 800]}))
    assert SECTION.claims(slower)[0].verdict == report.FAIL
    # Nothing generalises: neither claim can be tested.
    assert {c.verdict for c in SECTION.claims(data(grid_rises({}, {})))} == {report.NOT_TESTABLE}

    table = SECTION.table(faster["methods"])
    assert table.count("<tr>") == 1 + 12 and table.count("&ge; 1000") == 8  # the 8 configurations that never generalise
    assert "best" in table and "untuned" in table
    assert report.tables(faster) == {"methods": table}
    assert svg(lambda axes: SECTION.figure(axes, faster)).startswith("<svg")
