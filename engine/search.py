"""Finding D_crit adaptively: the bracket a d_crit_search narrows, round by round.

D_crit is the dataset size where the mean final test accuracy over seeds crosses `level`. The
search assumes what the paper's figures show: accuracy rises with D through one transition, so
`low` fails and `high` generalises (the request's bracket is taken as given; the analysis says so
when every probe fell on one side). Each round probes `probes_per_round` sizes that split the
bracket evenly in log D (so several workers each get work), and the next bracket is the tightest
pair of a failing size below a generalising one. The search ends when high / low < 1 +
`relative_tolerance`, when no integer size is left strictly inside the bracket, or when the next
round would pass `max_runs`.

Pure functions over plain values: the server (groklab/search.py) reads the probes from its
database and plans the next round with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.spec import SpecError

# Why a search stopped planning rounds (the analysis reports it).
REACHED_TOLERANCE = "reached_tolerance"
NO_SIZE_LEFT = "no_size_left"
MAX_RUNS = "max_runs"


@dataclass(frozen=True)
class ProbeResult:
    """One finished probe run: its D (D' for the ungrokking side), round and final test accuracy."""

    train_size: int
    round: int
    final_test_acc: float


def probe_sizes(low: int, high: int, count: int) -> list[int]:
    """Up to `count` integer sizes strictly inside (low, high), spaced evenly in log D."""
    ratio = high / low
    sizes = {round(low * ratio ** (i / (count + 1))) for i in range(1, count + 1)}
    return sorted(d for d in sizes if low < d < high)


def mean_accuracy_by_size(probes: Iterable[ProbeResult]) -> dict[int, float]:
    """{D: mean final test accuracy over its probes}."""
    by_size: dict[int, list[float]] = {}
    for probe in probes:
        by_size.setdefault(probe.train_size, []).append(probe.final_test_acc)
    return {d: sum(v) / len(v) for d, v in sorted(by_size.items())}


def narrow(low: int, high: int, mean_by_size: Mapping[int, float], level: float) -> tuple[int, int]:
    """The tightest bracket the probed means allow: the smallest probed size inside (low, high)
    whose mean reaches `level` becomes high, then the largest failing size below it becomes low.

    A noisy, non-monotone curve still gives a bracket with a failing size under a generalising one.
    """
    inside = {d: m for d, m in mean_by_size.items() if low < d < high}
    high = min([d for d, m in inside.items() if m >= level], default=high)
    low = max([d for d, m in inside.items() if m < level and d < high], default=low)
    return low, high


def reached_tolerance(low: int, high: int, relative_tolerance: float) -> bool:
    return high / low < 1 + relative_tolerance


def bracket_after(low: int, high: int, probes: Sequence[ProbeResult], level: float) -> tuple[int, int]:
    """The bracket after narrowing by every round so far, one round at a time as the search did."""
    for r in sorted({p.round for p in probes}):
        low, high = narrow(low, high, mean_accuracy_by_size(p for p in probes if p.round <= r), level)
    return low, high


@dataclass(frozen=True)
class NextRound:
    """What the search does once its rounds so far have finished."""

    bracket: tuple[int, int]
    sizes: list[int]
    """The sizes to probe next; empty when the search has ended."""
    ended: str | None
    """Why no round follows (REACHED_TOLERANCE, NO_SIZE_LEFT, MAX_RUNS), or None."""


def next_round(
    low: int,
    high: int,
    probes: Sequence[ProbeResult],
    *,
    level: float,
    relative_tolerance: float,
    probes_per_round: int,
    runs_per_size: int,
    runs_so_far: int,
    max_runs: int,
) -> NextRound:
    """The next round's sizes (each probed `runs_per_size` times, once per seed), or why none."""
    bracket = bracket_after(low, high, probes, level)
    if reached_tolerance(*bracket, relative_tolerance):
        return NextRound(bracket, [], REACHED_TOLERANCE)
    sizes = probe_sizes(*bracket, probes_per_round)
    if not sizes:
        return NextRound(bracket, [], NO_SIZE_LEFT)
    room = (max_runs - runs_so_far) // runs_per_size
    if room < 1:
        return NextRound(bracket, [], MAX_RUNS)
    if room < len(sizes):
        sizes = probe_sizes(*bracket, room)
    return NextRound(bracket, sizes, None)


def rounds_to_tolerance(low: int, high: int, relative_tolerance: float, probes_per_round: int) -> int:
    """Rounds a search needs, at worst, to bring high / low under 1 + tolerance: each round cuts
    the log-bracket into probes_per_round + 1 parts (the README's run-count comparison)."""
    log_ratio, log_goal = math.log(high / low), math.log(1 + relative_tolerance)
    rounds = 0
    while log_ratio >= log_goal:
        log_ratio /= probes_per_round + 1
        rounds += 1
    return rounds


def check_bracket(low: int, high: int, num_pairs: int, largest: int | None = None) -> None:
    """422s naming the field: a bracket must be ordered and inside [1, pairs - 1] (and, for the
    ungrokking side, no larger than phase 1's training set, `largest`)."""
    if low >= high:
        raise SpecError("high", f"the bracket needs low < high, got low {low} and high {high}")
    if high > num_pairs - 1:
        raise SpecError("high", f"{high} leaves no test set: the task has {num_pairs} pairs")
    if largest is not None and high > largest:
        raise SpecError("high", f"D' {high} is larger than phase 1's training set of {largest}")
