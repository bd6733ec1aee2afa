"""Test accuracy and grokking delay against the training set's size D."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section, rows


def _late(step: int | None) -> float:
    return math.inf if step is None else step


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    delays = [(r["train_size"], r["generalisation_step"]) for r in sorted(rows(data["sweep"]), key=lambda r: r["train_size"])]
    monotone = len(delays) >= 2 and all(_late(a[1]) >= _late(b[1]) for a, b in zip(delays, delays[1:]))
    # No run generalising in its budget orders nothing: the claim is untested, not passed.
    testable = len(delays) >= 2 and any(s is not None for _, s in delays)
    return [Claim(
        "sweep", "more training data generalises sooner (grokking delay falls as D grows)",
        "half the pairs generalise within ~1,000 steps at P=113, 60% and more with no delay",
        ", ".join(f"D={d}: step {s}" for d, s in delays) or "no succeeded runs",
        "generalisation step non-increasing in D (never = infinitely late)",
        (PASS if monotone else FAIL) if testable else NOT_TESTABLE,
    )]  # fmt: skip


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    ordered = sorted(rows(data["sweep"]), key=lambda r: r["train_size"])
    sizes = [r["train_size"] for r in ordered]
    axes.plot(sizes, [r["final_test_acc"] for r in ordered], "o-", label="final test accuracy")
    axes.set_xlabel("D (training pairs)")
    axes.set_ylabel("final test accuracy")
    twin = axes.twinx()
    delays = [r["grokking_delay"] if r["grokking_delay"] is not None else math.nan for r in ordered]
    twin.plot(sizes, delays, "s--", color="tab:orange", label="grokking delay")
    twin.set_ylabel("grokking delay (steps)")
    axes.legend(loc="upper left", fontsize=7)
    twin.legend(loc="lower right", fontsize=7)


SECTION = Section("sweep", "Test accuracy and grokking delay vs training fraction", claims, figure)
