"""Analyses read the paper's quantities off synthetic series: labels, crossings, bootstrap, efficiency."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.spec import PhaseSpec, RunSpec, TaskSpec
from groklab.analysis import (
    RunRecord,
    Thresholds,
    analyse_experiment,
    analyse_run,
    d_crit,
    efficiency,
    first_crossing,
    rows_csv,
    weight_decay_collapse,
)

T = Thresholds()
ONE_PHASE = RunSpec(phases=[PhaseSpec(steps=1000)])
TWO_PHASES = RunSpec(phases=[PhaseSpec(steps=500), PhaseSpec(steps=500, train_set="subset", subset_size=400)])


def series(train_acc, test_acc, *, every=100, phase=None, train_loss=None, param_norm=None):
    """Series logged every `every` steps from step 0, one value per point."""
    steps = range(0, every * len(test_acc), every)
    out = {
        "train_acc": [[s, v] for s, v in zip(steps, train_acc)],
        "test_acc": [[s, v] for s, v in zip(steps, test_acc)],
        "phase": [[s, v] for s, v in zip(steps, phase or [0.0] * len(test_acc))],
    }
    if train_loss is not None:
        out["train_loss"] = [[s, v] for s, v in zip(steps, train_loss)]
    if param_norm is not None:
        out["param_norm"] = [[s, v] for s, v in zip(steps, param_norm)]
    return out


@pytest.mark.parametrize(
    ("train_acc", "test_acc", "spec", "phase", "label"),
    [
        ([0.1, 0.5, 0.9, 0.95], [0.0, 0.1, 0.2, 0.2], ONE_PHASE, None, "not_converged"),
        ([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.2, 0.3, 0.6, 1.0], ONE_PHASE, None, "grokked"),
        ([0.1, 1.0, 1.0, 1.0], [0.0, 0.5, 0.97, 1.0], ONE_PHASE, None, "generalised_without_delay"),
        ([0.1, 1.0, 1.0, 1.0, 1.0], [0.0, 0.1, 0.4, 0.55, 0.6], ONE_PHASE, None, "semi_grokked"),
        ([0.1, 1.0, 1.0, 1.0, 1.0], [0.0, 0.3, 0.3, 0.32, 0.31], ONE_PHASE, None, "memorised"),
        (
            [0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            [0.0, 0.3, 0.99, 1.0, 0.6, 0.2, 0.1],
            TWO_PHASES,
            [0, 0, 0, 0, 1, 1, 1],
            "ungrokked",
        ),
        # Phase 2 on D' from a grokked start: labelled by what the phase did to its accuracy.
        ([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.3, 0.99, 1.0, 0.97, 0.96], TWO_PHASES, [0, 0, 0, 0, 1, 1], "kept"),
        (
            [0.1, 1.0, 1.0, 1.0, 1.0, 1.0],
            [0.0, 0.3, 0.99, 1.0, 0.9, 0.8],
            TWO_PHASES,
            [0, 0, 0, 0, 1, 1],
            "partially_ungrokked",
        ),
        # A phase 2 that starts ungeneralised is judged like any run.
        ([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.1, 0.1, 0.1, 0.1, 0.1], TWO_PHASES, [0, 0, 0, 0, 1, 1], "memorised"),
    ],
)
def test_every_label_follows_its_rule(train_acc, test_acc, spec, phase, label):
    result = analyse_run(series(train_acc, test_acc, phase=phase), spec, T)
    assert result.label == label


def test_milestones_delay_and_final_values_are_read_off_the_series():
    result = analyse_run(series([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.3, 0.6, 1.0, 0.98]), ONE_PHASE, T)
    assert result.memorisation_step == 100 and result.generalisation_step == 400
    assert result.grokking_delay == 300
    assert result.final_test_acc == 0.98 and result.max_test_acc == 1.0
    assert result.train_size == 3830 and result.weight_decay == 1.0


def test_a_looser_no_delay_factor_turns_grokking_into_no_delay():
    data = series([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.2, 0.3, 0.6, 1.0])
    assert analyse_run(data, ONE_PHASE, Thresholds(no_delay_factor=5)).label == "generalised_without_delay"


def test_the_phase_series_places_a_forked_runs_boundary():
    # Phase 1 ends at step 300 by the phase points, not at 500 as the spec's lengths would say:
    # test accuracy there decides ungrokking.
    data = series([1.0] * 6, [0.2, 0.5, 0.9, 0.99, 0.3, 0.1], phase=[0, 0, 0, 0, 1, 1])
    result = analyse_run(data, TWO_PHASES, T)
    assert result.last_phase_start_step == 300 and result.test_acc_at_last_phase_start == 0.99
    assert result.label == "ungrokked" and result.train_size == 400


def test_a_phase_two_run_does_not_inherit_its_parents_grokking_delay():
    kept = series([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.97, 1.0, 0.97, 0.96], phase=[0, 0, 0, 0, 1, 1])
    result = analyse_run(kept, TWO_PHASES, T)
    assert result.label == "kept" and result.grokking_delay is None
    assert analyse_run(kept, ONE_PHASE, T).grokking_delay == 100  # the same history in one phase
    # Started memorised at step 300, generalised in phase 2 at 500: its own delay.
    late = series([0.1, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.2, 0.2, 0.2, 0.5, 0.97], phase=[0, 0, 0, 0, 1, 1])
    result = analyse_run(late, TWO_PHASES, T)
    assert result.grokking_delay == 500 - 300


def test_null_points_never_cross_a_threshold():
    data = series([0.1, 1.0, 1.0], [0.0, None, None])
    result = analyse_run(data, ONE_PHASE, T)
    assert result.generalisation_step is None and result.final_test_acc == 0.0


def test_thresholds_must_be_consistent():
    with pytest.raises(ValidationError):
        Thresholds(semi_min=0.96)
    with pytest.raises(ValidationError):
        Thresholds(generalised_acc=1.5)


def test_crossing_interpolates_linearly_between_neighbours():
    assert first_crossing([100, 200, 300], [0.2, 0.4, 0.8], 0.5) == (225.0, None)


def test_crossing_exactly_at_a_point_is_that_point():
    assert first_crossing([100, 200, 300], [0.2, 0.5, 0.8], 0.5) == (200.0, None)


def test_crossing_takes_the_first_rise_of_a_non_monotone_curve():
    x, reason = first_crossing([100, 200, 300, 400], [0.2, 0.6, 0.3, 0.9], 0.5)
    assert x == pytest.approx(175.0) and reason is None


@pytest.mark.parametrize(
    ("ys", "words"),
    [([0.6, 0.7, 0.9], "at or above"), ([0.1, 0.2, 0.3], "below"), ([0.9, 0.6, 0.1], "never rises")],
)
def test_no_crossing_gives_null_and_a_reason(ys, words):
    x, reason = first_crossing([100, 200, 300], ys, 0.5)
    assert x is None and words in reason


def test_a_single_size_has_no_crossing():
    assert first_crossing([100], [0.9], 0.5)[0] is None


def test_d_crit_bootstrap_is_reproducible_and_brackets_the_estimate():
    by_size = {400: [0.05, 0.1, 0.2], 600: [0.3, 0.5, 0.4], 800: [0.7, 0.9, 0.6], 1000: [1.0, 1.0, 0.95]}
    first, second = d_crit(by_size), d_crit(by_size)
    assert first == second
    low, high = first["interval"]
    assert low <= first["d_crit"] <= high and 600 <= low and high <= 800
    assert first["crossing_share"] == 1.0


def test_d_crit_without_a_crossing_has_no_interval():
    result = d_crit({400: [0.9], 800: [1.0]})
    assert result["d_crit"] is None and result["interval"] is None and "above" in result["reason"]


def test_collapse_reports_the_largest_gap_at_a_shared_size():
    curves = {0.5: {400: [0.1], 800: [0.9]}, 1.0: {400: [0.2], 800: [0.5], 1200: [1.0]}}
    result = weight_decay_collapse(curves)
    assert result["max_gap"] == pytest.approx(0.4) and result["train_size"] == 800
    assert result["weight_decays"] == [0.5, 1.0]
    assert weight_decay_collapse({1.0: {400: [0.1]}})["max_gap"] is None


def record(i, spec, analysis, status="succeeded", role="run"):
    return RunRecord(id=i, index=i, status=status, role=role, spec=spec, analysis=analysis)


def efficiency_run(i, size, loss, norm, random_labels, test_acc=1.0, spike=False):
    """A converged run: its last evaluations sit at (loss, norm), after an early memorising phase
    at a much larger norm; `spike` puts one wild evaluation among the last ones."""
    spec = RunSpec(task=TaskSpec(train_size=size, random_labels=random_labels))
    losses = [1.0, 0.001, loss, loss, loss * (1e4 if spike else 1), loss, loss]
    norms = [10.0, 80.0, norm, norm, norm * (3 if spike else 1), norm, norm]
    data = series([1.0] * 7, [0.0, 0.0] + [test_acc] * 5, train_loss=losses, param_norm=norms)
    return record(i, spec, analyse_run(data, spec, T))


def sweep(first_id, size, norm_at_1e4, random_labels, **kw):
    """A weight-decay sweep at one D: losses 1e-6, 1e-4, 1e-2 with norm falling 5 per decade."""
    return [
        efficiency_run(first_id + k, size, 10.0**e, norm_at_1e4 - 5 * (e + 4), random_labels, **kw)
        for k, e in enumerate((-6, -4, -2))
    ]


def test_efficiency_reads_each_circuits_norm_at_one_loss_off_the_weight_decay_sweep_and_finds_the_crossing():
    runs = [
        *sweep(0, 200, 20.0, True),
        *sweep(10, 400, 28.0, True, spike=True),  # one wild evaluation each: medians ignore it
        *sweep(20, 800, 40.0, True),
        *sweep(30, 4000, 32.0, False),
    ]
    result = efficiency(runs, T)
    assert result["loss"] == 1e-4
    assert [c["param_norm_at_loss"] for c in result["memorise"]] == pytest.approx([20.0, 28.0, 40.0])
    assert [c["param_norm_at_loss"] for c in result["generalise"]] == pytest.approx([32.0])
    # Memorisation 28 -> 40 between 400 and 800 crosses the flat generalising norm of 32 at 400 + 400/3.
    assert result["d_crit"] == pytest.approx(400 + 400 / 3)
    assert [p["n"] for p in result["memorise"]] == [3, 3, 3]


def test_a_generalising_run_counts_only_once_it_has_generalised():
    """The old rule read a norm at the first step the loss target was met, while a generalising run
    still memorised (its norm then is a memoriser's, at ~80 here): the curves could never cross."""
    runs = [*sweep(0, 200, 20.0, True), *sweep(10, 800, 40.0, True), *sweep(20, 4000, 32.0, False)]
    not_yet = sweep(30, 5000, 60.0, False, test_acc=0.4)
    result = efficiency(runs + not_yet, T)
    assert [c["train_size"] for c in result["generalise"]] == [4000]
    assert {e["run_id"] for e in result["excluded"]} == {30, 31, 32}
    assert all(e["reason"] == "has not generalised" for e in result["excluded"])
    assert 200 < result["d_crit"] < 800


def test_each_run_says_how_far_its_norm_still_moved_and_the_sweep_carries_it():
    """param_norm_drift: the relative change of the norm over the run's last quarter of steps."""
    falling = series([1.0] * 11, [1.0] * 11, train_loss=[1e-4] * 11, param_norm=[40.0 - i for i in range(11)])
    result = analyse_run(falling, ONE_PHASE, T)  # from the first evaluation at or after step 750 (800: 32) to the last (30)
    assert result.param_norm_drift == pytest.approx((32.0 - 30.0) / 30.0)
    settled = series([1.0] * 11, [1.0] * 11, train_loss=[1e-4] * 11, param_norm=[30.0] * 11)
    assert analyse_run(settled, ONE_PHASE, T).param_norm_drift == 0.0
    runs = [*sweep(0, 200, 20.0, True), *sweep(10, 4000, 32.0, False)]
    curve = efficiency(runs, T)["memorise"][0]
    assert [p["param_norm_drift"] for p in curve["sweep"]] == [0.0, 0.0, 0.0] and curve["max_param_norm_drift"] == 0.0


def test_efficiency_without_a_crossing_or_a_usable_sweep_says_why():
    runs = [*sweep(0, 200, 40.0, True), *sweep(10, 400, 50.0, True), *sweep(20, 4000, 30.0, False)]
    result = efficiency(runs, T)
    assert result["d_crit"] is None and "at or above" in result["reason"]
    assert efficiency(runs[:6], T)["reason"].startswith("needs converged circuits of both kinds")
    one_run = efficiency([runs[0], *runs[6:]], T)
    assert one_run["memorise"][0]["reason"] == "needs two runs with different converged losses"
    outside = efficiency(runs, Thresholds(efficiency_loss=1.0))
    assert outside["d_crit"] is None and "outside the sweep" in outside["memorise"][0]["reason"]


def phase2_run(i, size, wd, final):
    spec = RunSpec(
        task=TaskSpec(train_fraction=0.5),
        phases=[PhaseSpec(steps=300), PhaseSpec(steps=300, train_set="subset", subset_size=size, weight_decay=wd)],
    )
    data = series([1.0] * 5, [0.1, 1.0, 1.0, 1.0, final], phase=[0, 0, 0, 1, 1])
    return record(i, spec, analyse_run(data, spec, T), role="phase2")


def test_experiment_analysis_groups_phase2_accuracy_by_subset_size_and_weight_decay():
    runs = [
        phase2_run(0, 400, 1.0, 0.1),
        phase2_run(1, 400, 1.0, 0.2),
        phase2_run(2, 800, 1.0, 0.9),
        phase2_run(3, 400, 2.0, 0.1),
        phase2_run(4, 800, 2.0, 0.8),
        record(5, ONE_PHASE, None, status="running"),
        record(6, ONE_PHASE, None, status="failed"),
    ]
    result = analyse_experiment(runs)
    assert not result["complete"] and result["missing_run_ids"] == [5] and result["excluded_run_ids"] == [6]
    point = next(c for c in result["accuracy_vs_train_size"] if c["train_size"] == 400 and c["weight_decay"] == 1.0)
    assert point["n"] == 2 and point["mean"] == pytest.approx(0.15) and point["role"] == "phase2"
    pooled = result["d_crit"]["phase2"]["pooled"]
    assert 400 < pooled["d_crit"] < 800
    assert result["weight_decay_collapse"]["phase2"]["max_gap"] == pytest.approx(0.1)
    csv_text = rows_csv(result["runs"])
    assert csv_text.splitlines()[0].startswith("id,index,status,role")
    assert len(csv_text.splitlines()) == 1 + len(runs)
