"""The reproduction report's from-scratch D_crit reads runs of different step budgets fairly."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from groklab.client.report import ExperimentData
from groklab.client.report.d_crit import scratch_d_crit


_run_ids = itertools.count(1)


def _experiment(name: str, *runs: tuple[int, int, float]) -> ExperimentData:
    """An experiment's analysis rows: (D, step budget, final test accuracy) per run."""
    rows: list[dict[str, Any]] = [
        {"id": next(_run_ids), "status": "succeeded", "train_size": d, "total_steps": steps, "final_test_acc": acc}
        for d, steps, acc in runs
    ]
    return ExperimentData(name, 1, {}, rows, {}, {}, None)


def test_a_short_run_that_did_not_generalise_is_left_out_and_a_long_one_counts() -> None:
    data = {
        # 883 is still memorising after 2,000 steps; 700 and 800 generalise in a 40,000-step budget.
        "sweep": _experiment("sweep", (883, 2_000, 0.04), (1104, 2_000, 0.99)),
        "grokking": _experiment("grokking", (1104, 2_500, 0.98)),
        "semi_grokking": _experiment("semi_grokking", (650, 40_000, 0.10), (700, 40_000, 0.99), (800, 40_000, 0.98)),
    }
    estimate = scratch_d_crit(data)
    assert estimate["longest_budget"] == 40_000
    assert [(r["train_size"], r["total_steps"]) for r in estimate["left_out"]] == [(883, 2_000)]
    assert estimate["d_crit"] == pytest.approx(650 + (0.5 - 0.10) / (0.99 - 0.10) * 50)

    # Without the long runs, 883's failure has the longest budget and counts: D_crit lies above it.
    short = scratch_d_crit({**data, "grokking": _experiment("grokking", (1104, 2_000, 0.98)),
                            "semi_grokking": _experiment("semi_grokking")})  # fmt: skip
    assert short["longest_budget"] == 2_000 and short["left_out"] == []
    assert 883 < short["d_crit"] < 1104
