"""Rounds a one-probe d_crit_search takes on gradual curves, beside plain bisection.

`python -m benchmarks.search_rounds` (no server, no training: the searcher of engine/d_crit_bracket.py
against a curve). Test accuracy rises through the level along a logistic in log D,
acc(D) = 1 / (1 + (D_crit / D)^k), with D_crit at 199 log-even places in the bracket [50, 800].
k is the steepness: 3.7-4.2 fit the D_crit benchmark's probes and grid on the CI ungrokking
config (D' 200: 0.373, 238: 0.532, 317: 0.764, 400: 0.908); 1 is shallow, 10 nearly a step. It prints, for the
7-size grid's tolerance (0.587), 10% and 5%, the mean and largest rounds of the search as planned
(`next_round`: interpolated probes) and of bisection (the log midpoint of the same bracket each
round), i.e. runs per seed.
"""

from __future__ import annotations

import statistics

from engine.d_crit_bracket import ProbeResult, narrow, next_round, probe_sizes, reached_tolerance

LOW, HIGH, PLACES = 50, 800, 199
STEEPNESS = (1.0, 3.5, 10.0)
TOLERANCES = ((HIGH / LOW) ** (1 / 6) - 1, 0.1, 0.05)


def searched_rounds(accuracy, tolerance: float) -> int:  # type: ignore[no-untyped-def]
    probes: list[ProbeResult] = []
    while True:
        plan = next_round(LOW, HIGH, probes, level=0.5, relative_tolerance=tolerance, probes_per_round=1,
                          runs_per_size=1, runs_so_far=len(probes), max_runs=1_000)  # fmt: skip
        if plan.ended:
            return len(probes)
        probes.append(ProbeResult(plan.sizes[0], len(probes) + 1, accuracy(plan.sizes[0])))


def bisection_rounds(accuracy, tolerance: float) -> int:  # type: ignore[no-untyped-def]
    low, high, rounds = LOW, HIGH, 0
    while not reached_tolerance(low, high, tolerance) and (sizes := probe_sizes(low, high, 1)):
        low, high = narrow(low, high, {sizes[0]: accuracy(sizes[0])}, 0.5)
        rounds += 1
    return rounds


def main() -> None:
    for tolerance in TOLERANCES:
        for k in STEEPNESS:
            searched, bisected = [], []
            for i in range(1, PLACES + 1):
                d_crit = LOW * (HIGH / LOW) ** (i / (PLACES + 1))
                curve = lambda d, d_crit=d_crit: 1 / (1 + (d_crit / d) ** k)  # noqa: E731
                searched.append(searched_rounds(curve, tolerance))
                bisected.append(bisection_rounds(curve, tolerance))
            print(f"tolerance {tolerance:.3f}, k {k:4.1f}: search {statistics.mean(searched):.2f} rounds "
                  f"(max {max(searched)}), bisection {statistics.mean(bisected):.2f} (max {max(bisected)}), "
                  f"ratio {statistics.mean(bisected) / statistics.mean(searched):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
