"""Finding D_crit adaptively: the bracket a d_crit_search narrows, round by round.

D_crit is the dataset size where the mean final test accuracy over seeds crosses `level`. The
search assumes what the paper's figures show: accuracy rises with D through one transition, so
`low` fails and `high` generalises (the request's bracket is taken as given; the analysis says so
when every probe fell on one side). Each round probes `probes_per_round` sizes that split the
bracket evenly in log D (so several workers each get work), and the next bracket is the tightest
pair of a failing size below a generalising one. The search ends when high / low < 1 +
`relative_tolerance`, when no integer size is left strictly inside the bracket, or when the next
round would pass `max_runs`.

A search of one probe a round uses the accuracies it has, not only their side of `level`: once
both ends of its bracket have been probed, it probes where the straight line through their mean
accuracies (in log D) crosses `level` (regula falsi), kept inside the middle half of the bracket;
until then it bisects. Test accuracy rises gradually with D, so that point tends to lie near the
transition; where an interpolated round kept more than half of its bracket (the curve was not
straight there) the next round bisects, so at worst two rounds cut the log-bracket to 3/8 where
bisection's two cut it to 1/4. benchmarks/search_rounds.py measures both on logistic curves.

Pure functions over plain values: the server (groklab/search_rounds.py) reads the probes from its
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

# A one-probe round's probe lies at least this fraction of the log-bracket from either end: an
# interpolation close to one end would shrink the bracket little when it lands on the wrong side.
ONE_PROBE_MARGIN = 0.25


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
    """Whether the bracket is narrow enough to stop: high / low < 1 + relative_tolerance."""
    return high / low < 1 + relative_tolerance


def interpolated_size(low: int, high: int, mean_by_size: Mapping[int, float], level: float) -> int | None:
    """Where the line through (log low, mean accuracy at low) and (log high, mean accuracy at high)
    crosses `level`, held to the middle half of the bracket; None when an end has not been probed
    (the request's bracket is assumed, not measured) or no integer lies there."""
    if low not in mean_by_size or high not in mean_by_size:
        return None
    below, above = mean_by_size[low], mean_by_size[high]
    fraction = (level - below) / (above - below) if above > below else 0.5
    fraction = min(max(fraction, ONE_PROBE_MARGIN), 1 - ONE_PROBE_MARGIN)
    size = round(low * (high / low) ** fraction)
    return size if low < size < high else None


@dataclass(frozen=True)
class _Replay:
    bracket: tuple[int, int]
    bisect_next: bool
    """A one-probe search's next round bisects: its last round interpolated and kept more than half."""


def _replay(low: int, high: int, probes: Sequence[ProbeResult], level: float) -> _Replay:
    """Narrows by every round so far, one round at a time as the search did."""
    bisect_next = False
    for r in sorted({p.round for p in probes}):
        new_low, new_high = narrow(low, high, mean_accuracy_by_size(p for p in probes if p.round <= r), level)
        kept = math.log(new_high / new_low) / math.log(high / low)
        bisect_next = not bisect_next and kept > 0.5
        low, high = new_low, new_high
    return _Replay((low, high), bisect_next)


def round_sizes(
    low: int, high: int, probes: Sequence[ProbeResult], *, level: float, count: int
) -> tuple[tuple[int, int], list[int]]:
    """The bracket the rounds so far leave, and the next round's `count` sizes inside it (none when
    no integer is left there): even in log D, or the one-probe placement of the module docstring."""
    replay = _replay(low, high, probes, level)
    if count == 1 and not replay.bisect_next:
        size = interpolated_size(*replay.bracket, mean_accuracy_by_size(probes), level)
        if size is not None:
            return replay.bracket, [size]
    return replay.bracket, probe_sizes(*replay.bracket, count)


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
    room = (max_runs - runs_so_far) // runs_per_size
    bracket, sizes = round_sizes(low, high, probes, level=level, count=max(1, min(probes_per_round, room)))
    if reached_tolerance(*bracket, relative_tolerance):
        return NextRound(bracket, [], REACHED_TOLERANCE)
    if not sizes:
        return NextRound(bracket, [], NO_SIZE_LEFT)
    if room < 1:
        return NextRound(bracket, [], MAX_RUNS)
    return NextRound(bracket, sizes, None)


def rounds_to_tolerance(low: int, high: int, relative_tolerance: float, probes_per_round: int) -> int:
    """Rounds a search needs to bring high / low under 1 + tolerance when each round cuts the
    log-bracket into probes_per_round + 1 parts: at worst with several probes a round, and on a
    step for one (the run-count comparison in docs/concepts.md)."""
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
