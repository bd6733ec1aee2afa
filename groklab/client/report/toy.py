"""The Section 3 toy model and its ablations: each ablation's expected outcome."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section, rows
from groklab.client.report.figures import curves

_NEVER = ("never reaches generalised_acc", lambda r: r["generalisation_step"] is None)
EXPECTED = {
    "full": ("grokking: a delay, then generalisation", ("label grokked", lambda r: r["label"] == "grokked")),
    "gen_less_efficient": ("a less efficient C_gen never wins", _NEVER),
    "no_speed_difference": ("equal learning speeds remove the delay",
                            ("label generalised_without_delay", lambda r: r["label"] == "generalised_without_delay")),
    "no_weight_decay": ("without weight decay memorisation is never undone", _NEVER),
}  # fmt: skip


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    toy = {r["role"]: r for r in rows(data["toy"])}
    out = []
    for role, (text, (tolerance, holds)) in EXPECTED.items():
        row = toy.get(role)
        out.append(Claim("toy", f"{role}: {text}", "Section 3's toy model (docs/paper.md)",
                         f"label {row['label']}, generalised at {row['generalisation_step']}" if row else "no succeeded run",
                         tolerance, NOT_TESTABLE if row is None else PASS if holds(row) else FAIL))  # fmt: skip
    return out


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    curves(axes, data["toy"], lambda r: r["role"])
    axes.set_ylabel("test accuracy")


SECTION = Section(
    "toy", "The Section 3 toy model and its ablations", claims, figure,
    series=("train_acc", "test_acc", "w_gen", "w_mem"), seeded=False,
)  # fmt: skip
