"""The d_crit_search bracket (engine/d_crit_bracket.py): probes split it in log D (one probe a round:
where the bracket ends' accuracies say the curve crosses the level), rounds narrow it around the
true transition, and the search ends at the tolerance, out of sizes, or at max_runs."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from engine.experiments import DCritSearchExperiment, plan_experiment
from engine.d_crit_bracket import (
    MAX_RUNS,
    NO_SIZE_LEFT,
    REACHED_TOLERANCE,
    ProbeResult,
    interpolated_size,
    narrow,
    next_round,
    probe_sizes,
    rounds_to_tolerance,
)


def test_probes_split_the_bracket_evenly_in_log_d():
    assert probe_sizes(100, 800, 1) == [283]  # sqrt(100 * 800)
    assert probe_sizes(100, 800, 2) == [200, 400]
    assert probe_sizes(10, 12, 5) == [11]  # only one integer inside
    assert probe_sizes(10, 11, 3) == []


def test_narrowing_keeps_a_failing_size_under_a_generalising_one_even_on_a_noisy_curve():
    assert narrow(100, 800, {200: 0.1, 400: 0.9}, 0.5) == (200, 400)
    assert narrow(100, 800, {200: 0.9, 400: 0.9}, 0.5) == (100, 200)
    assert narrow(100, 800, {200: 0.1, 400: 0.2}, 0.5) == (400, 800)
    # Non-monotone: 300 generalises, 500 does not; the bracket is the lowest generalising size
    # and the largest failing size below it.
    assert narrow(100, 800, {200: 0.1, 300: 0.8, 500: 0.3}, 0.5) == (200, 300)
    assert narrow(100, 800, {50: 0.9, 900: 0.1}, 0.5) == (100, 800)  # outside the bracket: ignored


def _search(d_crit: float, low: int, high: int, tolerance: float, per_round: int, seeds: int, max_runs: int,
            accuracy=None):  # type: ignore[no-untyped-def]  # fmt: skip
    """Run the search against `accuracy(d)`, by default a step at d_crit (1 at or above it, else 0)."""
    accuracy = accuracy or (lambda d: float(d >= d_crit))
    probes: list[ProbeResult] = []
    rounds = 0
    while True:
        plan = next_round(low, high, probes, level=0.5, relative_tolerance=tolerance, probes_per_round=per_round,
                          runs_per_size=seeds, runs_so_far=len(probes), max_runs=max_runs)  # fmt: skip
        if plan.ended:
            return plan, rounds, probes
        rounds += 1
        assert 1 <= len(plan.sizes) <= per_round and all(plan.bracket[0] < d < plan.bracket[1] for d in plan.sizes)
        probes += [ProbeResult(d, rounds, accuracy(d)) for d in plan.sizes for _ in range(seeds)]


@given(
    low=st.integers(2, 500),
    span=st.floats(1.5, 100),
    where=st.floats(0.01, 0.99),
    tolerance=st.floats(0.02, 1.0),
    per_round=st.integers(1, 4),
    steepness=st.none() | st.floats(0.5, 50),
)
def test_the_bracket_always_holds_d_crit_and_ends_within_tolerance_in_the_predicted_rounds(
    low: int, span: float, where: float, tolerance: float, per_round: int, steepness: float | None
) -> None:
    """On a step at D_crit, or test accuracy rising through the level along a logistic in log D
    (steep or shallow), where a one-probe round's interpolated probe may land on either side."""
    high = max(low + 2, round(low * span))
    d_crit = low * (high / low) ** where
    curve = None if steepness is None else lambda d: 1 / (1 + (d_crit / d) ** steepness)
    plan, rounds, _ = _search(d_crit, low, high, tolerance, per_round, seeds=1, max_runs=10_000, accuracy=curve)
    new_low, new_high = plan.bracket
    assert new_low < d_crit <= new_high
    assert plan.ended in (REACHED_TOLERANCE, NO_SIZE_LEFT)
    if plan.ended == REACHED_TOLERANCE:
        assert new_high / new_low < 1 + tolerance
    else:
        assert new_high == new_low + 1  # every integer between was probed
    # Integer sizes can leave a bracket a little wider than the exact split would: one round more.
    # Interpolation can cost rounds: two of them cut the log-bracket to at most 3/8, not 1/4.
    interpolates = steepness is not None and per_round == 1
    assert rounds <= (2 if interpolates else 1) * rounds_to_tolerance(low, high, tolerance, per_round) + 1


def test_one_probe_a_round_interpolates_once_both_ends_of_the_bracket_are_probed():
    """The accuracies the D_crit benchmark measured on the CI ungrokking config (D' 200: 0.373,
    400: 0.908): the request's [50, 800] is bisected until a probe lies on each side."""
    kwargs = dict(level=0.5, relative_tolerance=0.1, probes_per_round=1, runs_per_size=1, max_runs=20)
    assert next_round(50, 800, [], runs_so_far=0, **kwargs).sizes == [200]
    probes = [ProbeResult(200, 1, 0.373)]
    assert next_round(50, 800, probes, runs_so_far=1, **kwargs).sizes == [400]  # 800 is assumed, not probed
    probes.append(ProbeResult(400, 2, 0.908))
    # The line from 0.373 to 0.908 crosses 0.5 0.24 of the way up [200, 400]: held to a quarter.
    assert next_round(50, 800, probes, runs_so_far=2, **kwargs).sizes == [238]
    assert probe_sizes(200, 400, 1) == [283]  # where bisection would probe


def test_an_interpolated_round_that_keeps_most_of_its_bracket_is_followed_by_bisection():
    kwargs = dict(level=0.5, relative_tolerance=0.01, probes_per_round=1, runs_per_size=1, max_runs=20)
    probes = [ProbeResult(400, 1, 0.45), ProbeResult(800, 2, 0.95)]
    assert next_round(100, 1600, probes, runs_so_far=2, **kwargs).sizes == [476]  # a quarter up [400, 800]
    probes.append(ProbeResult(476, 3, 0.3))  # a dip: the bracket keeps 3/4 of its log-width
    plan = next_round(100, 1600, probes, runs_so_far=3, **kwargs)
    assert plan.bracket == (476, 800)
    assert plan.sizes == probe_sizes(476, 800, 1) != [interpolated_size(476, 800, {476: 0.3, 800: 0.95}, 0.5)]
    probes.append(ProbeResult(plan.sizes[0], 4, 0.6))  # bisection kept half: interpolation again
    assert next_round(100, 1600, probes, runs_so_far=4, **kwargs).sizes == [
        interpolated_size(476, plan.sizes[0], {476: 0.3, plan.sizes[0]: 0.6}, 0.5)
    ]


def test_the_interpolated_size_needs_both_ends_probed_and_stays_in_the_middle_half():
    assert interpolated_size(100, 1600, {}, 0.5) is None
    assert interpolated_size(100, 1600, {100: 0.1}, 0.5) is None
    assert interpolated_size(100, 1600, {100: 0.4, 1600: 0.6}, 0.5) == 400  # the log midpoint
    assert interpolated_size(100, 1600, {100: 0.45, 1600: 0.65}, 0.5) == 200  # a quarter of the way
    assert interpolated_size(100, 1600, {100: 0.49, 1600: 0.99}, 0.5) == 200  # 2% of the way: a quarter
    assert interpolated_size(100, 1600, {100: 0.0, 1600: 0.51}, 0.5) == 800  # near high: three quarters
    assert interpolated_size(100, 1600, {100: 0.6, 1600: 0.4}, 0.5) == 400  # falling: no line to trust
    assert interpolated_size(10, 12, {10: 0.0, 12: 1.0}, 0.5) == 11
    assert interpolated_size(10, 11, {10: 0.0, 11: 1.0}, 0.5) is None


def test_the_search_stops_at_max_runs_with_whole_rounds():
    plan, rounds, probes = _search(300.0, 50, 800, 0.01, per_round=2, seeds=3, max_runs=13)
    assert plan.ended == MAX_RUNS
    assert len(probes) == 12 and rounds == 2  # 2 sizes x 3 seeds per round; a third would pass 13


def test_a_last_round_with_room_for_fewer_sizes_probes_fewer():
    plan = next_round(50, 800, [], level=0.5, relative_tolerance=0.1, probes_per_round=3, runs_per_size=2,
                      runs_so_far=0, max_runs=4)  # fmt: skip
    assert plan.sizes == probe_sizes(50, 800, 2)


def test_bisection_needs_fewer_runs_than_a_grid_at_the_same_tolerance():
    """The README's comparison: [50, 800] to 10% takes 5 bisection rounds (5 runs per seed) where
    a geometric grid at 10% adjacent ratio takes 31 sizes."""
    assert rounds_to_tolerance(50, 800, 0.1, 1) == 5
    assert math.floor(math.log(800 / 50) / math.log(1.1)) + 2 == 31


def test_the_ungrokking_side_plans_phase_one_per_seed_and_forks_round_one_from_it():
    request = DCritSearchExperiment.model_validate({
        "kind": "d_crit_search", "side": "ungrokking", "low": 50, "high": 800, "seeds": [0, 1],
        "base": {"task": {"p": 47, "train_fraction": 0.5}, "phases": [{"steps": 2500}]}, "phase2_steps": 3000,
    })  # fmt: skip
    runs = plan_experiment(request, 500)
    assert [r.role for r in runs] == ["phase1", "phase1", "probe", "probe", "probe", "probe"]
    phase1, probes = runs[:2], runs[2:]
    assert [p.spec.task.data_seed for p in phase1] == [0, 1]  # the seeds vary the data too
    for probe in probes:
        parent = phase1[probe.parent_index]
        assert probe.search_round == 1 and probe.spec.seed == parent.spec.seed
        assert probe.spec.phases[:-1] == parent.spec.phases and probe.spec.phases[-1].steps == 3000
    assert sorted({p.spec.final_train_size for p in probes}) == probe_sizes(50, 800, 2)


def test_the_scratch_side_trains_each_probe_from_scratch_at_its_size():
    request = DCritSearchExperiment.model_validate(
        {
            "kind": "d_crit_search",
            "low": 300,
            "high": 1200,
            "seeds": [0],
            "probes_per_round": 3,
            "base": {"task": {"p": 47}},
        }  # fmt: skip
    )
    runs = plan_experiment(request, 500)
    assert [r.spec.task.train_size for r in runs] == probe_sizes(300, 1200, 3)
    assert all(r.role == "probe" and r.parent_index is None and len(r.spec.phases) == 1 for r in runs)
