"""Semi-grokking: near D_crit, generalisation may stop part-way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.client.report.claims import NOT_TESTABLE, PASS, Claim, ExperimentData, Section, fmt, rows
from groklab.client.report.figures import curves


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    semi = rows(data["semi_grokking"])
    labels = sorted({r["label"] for r in semi})
    shown = any(r["label"] == "semi_grokked" for r in semi)
    return [Claim("semi_grokking", "near D_crit, generalisation can stop part-way (semi-grokking)",
                  "semi-grokking needs long runs near D_crit (the paper's sat at ~0.55 for ~10^7 steps)",
                  f"labels {labels}, final test accuracies {[fmt(r['final_test_acc']) for r in semi]}",
                  "a run labelled semi_grokked", PASS if shown else NOT_TESTABLE)]  # fmt: skip


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    curves(axes, data["semi_grokking"], lambda r: f"D={r['train_size']} ({r['label']})")
    axes.set_ylabel("test accuracy")


SECTION = Section("semi_grokking", "Semi-grokking near D_crit", claims, figure)
