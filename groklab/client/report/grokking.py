"""Grokking curves: test accuracy generalises long after train accuracy memorises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.client.report.claims import FAIL, PASS, Claim, ExperimentData, Section, rows
from groklab.client.report.figures import curves


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    out = []
    for row in sorted(rows(data["grokking"]), key=lambda r: r["weight_decay"]):
        mem, gen = row["memorisation_step"], row["generalisation_step"]
        ratio = gen / mem if mem and gen else None
        out.append(Claim(
            "grokking", f"wd {row['weight_decay']:g}: test accuracy generalises long after train accuracy memorises",
            "P=47, half the pairs: memorised by ~200 steps, test accuracy ~0.96 by ~1,400 (docs/paper.md)",
            f"memorised at {mem}, generalised at {gen}" + (f" ({ratio:.1f}x)" if ratio else "") + f", label {row['label']}",
            "generalised at >= 2x the memorisation step", PASS if ratio is not None and ratio >= 2 else FAIL,
        ))  # fmt: skip
    return out


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    curves(axes, data["grokking"], lambda r: f"wd {r['weight_decay']:g}", ("train_acc", "test_acc"))
    axes.set_ylabel("accuracy")


SECTION = Section("grokking", "Grokking: memorise first, generalise much later", claims, figure)
