"""D_crit read three ways: ungrokking's (phase 2 on D'), from scratch (sweep, grokking and
semi-grokking runs together) and the efficiency crossing; claims that compare them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.analysis_models import DCritEstimate
from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section, fmt, rows


def ungrokking_d_crit(data: Mapping[str, ExperimentData]) -> DCritEstimate | None:
    """The pooled D_crit of ungrokking's phase-2 runs; None before any succeeded."""
    phase2 = data["ungrokking"].analysis.d_crit.get("phase2")
    return phase2.pooled if phase2 is not None else None


def scratch_d_crit(data: Mapping[str, ExperimentData]) -> dict[str, Any]:
    """D_crit from runs trained from scratch: final test accuracy vs D over the sweep, grokking and
    semi-grokking runs, crossing 0.5.

    Their step budgets differ, and a run that has not generalised in a short budget says nothing
    about a D that a longer one generalises (at P=47, D=883 is still memorising at 2,000 steps
    while D=700 generalises by ~21,000). So a run counts if it generalised (reached 0.5), at any
    budget, or if it had the longest budget of them all; the others are listed in `left_out`.
    """
    from groklab.analysis import CROSSING_LEVEL, d_crit

    runs = [row for name in ("sweep", "grokking", "semi_grokking") for row in rows(data[name])
            if row["final_test_acc"] is not None]  # fmt: skip
    longest = max((row["total_steps"] for row in runs), default=None)
    by_size: dict[int, list[float]] = {}
    left_out = []
    for row in runs:
        if row["final_test_acc"] >= CROSSING_LEVEL or row["total_steps"] == longest:
            by_size.setdefault(row["train_size"], []).append(row["final_test_acc"])
        else:
            left_out.append({"run_id": row["id"], "train_size": row["train_size"], "total_steps": row["total_steps"]})
    return {**d_crit(by_size), "longest_budget": longest, "left_out": left_out}


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    ungrok, scratch = ungrokking_d_crit(data), scratch_d_crit(data)
    ungrok_d = ungrok.d_crit if ungrok is not None else None
    eff = data["efficiency"].analysis.efficiency
    both = ungrok_d is not None and scratch["d_crit"] is not None
    out = [Claim(
        "D_crit", "D_crit from ungrokking lies below D_crit from training from scratch",
        "ungrokking ~800-1,000 and from scratch ~1,500-2,050 at P=113",
        f"ungrokking {fmt(ungrok_d)}, from scratch {fmt(scratch['d_crit'])}"
        + ("" if both else f" ({(ungrok.reason if ungrok else 'no phase-2 run succeeded') or scratch['reason']})"),
        "ungrokking < from scratch", (PASS if ungrok_d < scratch["d_crit"] else FAIL) if both else NOT_TESTABLE,
    )]  # fmt: skip
    if eff.d_crit is not None or ungrok_d is not None:
        out.append(Claim(
            "D_crit", "the efficiency crossing lies near the ungrokking D_crit",
            "both estimate one D_crit (~500-1,000 and ~800-1,000 at P=113)",
            f"efficiency {fmt(eff.d_crit)}, ungrokking {fmt(ungrok_d)}", "within a factor of 2",
            NOT_TESTABLE if eff.d_crit is None or ungrok_d is None
            else PASS if 0.5 <= eff.d_crit / ungrok_d <= 2 else FAIL,
        ))  # fmt: skip
    return out


SECTION = Section("D_crit", "D_crit", claims)
