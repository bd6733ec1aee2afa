"""Ungrokking: final test accuracy against D' after phase 2 on a subset, with its D_crit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section, fmt, rows


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    ung = data["ungrokking"]
    phase2 = sorted(rows(ung, role="phase2"), key=lambda r: r["train_size"])
    out = []
    if phase2:
        smallest, largest = phase2[0], phase2[-1]
        out.append(Claim("ungrokking", f"the smallest D' ({smallest['train_size']}) ungroks",
                         "small D' fall to near chance (P=47: D'=100 ends near 0.08)",
                         f"final test accuracy {fmt(smallest['final_test_acc'])}", "< 0.3",
                         PASS if smallest["final_test_acc"] < 0.3 else FAIL))  # fmt: skip
        out.append(Claim("ungrokking", f"the largest D' ({largest['train_size']}) keeps its accuracy",
                         "the largest D' end near 1 (P=47: 600 and more at 1.0)",
                         f"final test accuracy {fmt(largest['final_test_acc'])}", ">= 0.9",
                         PASS if largest["final_test_acc"] >= 0.9 else FAIL))  # fmt: skip
    decays = sorted({r["weight_decay"] for r in phase2})
    collapse = ung.analysis.weight_decay_collapse.get("phase2")
    max_gap = collapse.max_gap if collapse is not None else None
    out.append(Claim("ungrokking", "curves for different weight decays overlap",
                     "the accuracy D' ends with does not depend on weight decay (Fig. 7)",
                     f"max gap {fmt(max_gap)} over weight decays {decays}", "max gap < 0.15",
                     NOT_TESTABLE if len(decays) < 2 or max_gap is None
                     else PASS if max_gap < 0.15 else FAIL))  # fmt: skip
    return out


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    analysis = data["ungrokking"].analysis
    phase2 = [p for p in analysis.accuracy_vs_train_size if p.role == "phase2"]
    for wd in sorted({p.weight_decay for p in phase2}):
        points = sorted((p for p in phase2 if p.weight_decay == wd), key=lambda p: p.train_size)
        axes.errorbar([p.train_size for p in points], [p.mean for p in points], yerr=[p.std for p in points],
                      marker="o", capsize=3, label=f"wd {wd:g}")  # fmt: skip
    phase2_d_crit = analysis.d_crit.get("phase2")
    pooled = phase2_d_crit.pooled.d_crit if phase2_d_crit is not None else None
    if pooled is not None:
        axes.axvline(pooled, color="tab:red", linestyle="--", label=f"D_crit {pooled:.0f}")
    axes.set_xscale("log")
    axes.set_xlabel("D' (log scale)")
    axes.set_ylabel("final test accuracy")
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize=7)


SECTION = Section("ungrokking", "Ungrokking: final test accuracy vs D'", claims, figure)
