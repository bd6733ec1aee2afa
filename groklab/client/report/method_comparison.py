"""A grokking method against a baseline, each tuned over one learning-rate x weight-decay grid
(the method_comparison kind; its analysis: groklab/method_comparison.py): steps to generalise per
configuration, and the method's speed-up over the untuned and over the tuned baseline."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from groklab.analysis_models import MethodComparison, SpeedUp
from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section, fmt

NAME = "methods"
"""The experiment's name in a scale's folder: examples/<scale>/methods.json."""
REFERENCE = "published speed-ups are often measured against a baseline left at its defaults (docs/concepts.md)"


def _comparison(data: Mapping[str, ExperimentData]) -> MethodComparison:
    result = data[NAME].analysis.method_comparison
    if result is None:
        raise ValueError(f"experiment {data[NAME].id} has no method_comparison section: is it a method_comparison?")
    return result


def _speed(speed: SpeedUp) -> str:
    if speed.speed_up is None:
        return f"none ({speed.reason})"
    interval = speed.interval
    text = f"{speed.speed_up:.3g}x" + (f", 95% interval [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else "")
    return text + (f" ({speed.bound} bound: a median is censored at the budget)" if speed.bound else "")


def faster_verdict(speed: SpeedUp) -> str:
    """Whether the method generalised sooner: its interval above 1. A censored median makes the
    speed-up a bound, which can show only one direction (a lower bound above 1 passes, an upper
    bound below 1 fails); both censored, or no speed-up, is not testable."""
    if speed.speed_up is None or speed.bound == "unknown" or speed.interval is None:
        return NOT_TESTABLE
    low, high = speed.interval
    if speed.bound == "lower":
        return PASS if low > 1 else NOT_TESTABLE
    if speed.bound == "upper":
        return FAIL if high < 1 else NOT_TESTABLE
    return PASS if low > 1 else FAIL


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    result = _comparison(data)
    untuned, tuned = result.untuned, result.tuned
    comparable = all(s.speed_up is not None and s.bound is None for s in (untuned, tuned))
    return [
        Claim(
            NAME, f"the method reaches test accuracy {result.level:g} in fewer steps than the untuned baseline",
            REFERENCE, _speed(untuned), "the speed-up's 95% interval over seeds above 1", faster_verdict(untuned),
        ),
        Claim(
            NAME, "the method's speed-up shrinks against a tuned baseline (each side at its best learning rate and weight decay)",
            REFERENCE, f"tuned {_speed(tuned)}; untuned {_speed(untuned)}", "tuned speed-up <= untuned",
            (PASS if tuned.speed_up <= untuned.speed_up else FAIL) if comparable else NOT_TESTABLE,
        ),
    ]  # fmt: skip


def _label(learning_rate: float, weight_decay: float) -> str:
    return f"lr {learning_rate:g}\nwd {weight_decay:g}"


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    """Median steps to generalise per configuration, each seed a dot; a censored median (at least
    the budget) drawn hollow; the budget a dashed line."""
    result = _comparison(data)
    configs = result.configurations
    points = sorted({(c.learning_rate, c.weight_decay) for c in configs})
    for offset, side, colour in ((-0.12, "baseline", "tab:blue"), (0.12, "method", "tab:orange")):
        for config in (c for c in configs if c.side == side):
            x = points.index((config.learning_rate, config.weight_decay)) + offset
            axes.scatter([x] * len(config.seeds), [s.steps for s in config.seeds], s=9, color=colour, alpha=0.5)
            if config.median_steps is not None:
                axes.scatter([x], [config.median_steps], s=60, marker="D", edgecolors=colour,
                             facecolors="none" if config.censored else colour)  # fmt: skip
        axes.scatter([], [], marker="D", color=colour, label=f"{side} median (hollow: censored)")
    budget = max((c.budget for c in configs), default=None)
    if budget is not None:
        axes.axhline(budget, linestyle="--", color="grey", linewidth=1, label="step budget")
    axes.set_xticks(range(len(points)), [_label(lr, wd) for lr, wd in points], fontsize=7)
    axes.set_ylabel(f"steps to test accuracy {result.level:g}")
    axes.legend(fontsize=7)


def table(data: ExperimentData) -> str:
    """Every configuration's median steps, its seeds, and which is each side's best."""
    e = html.escape
    result = _comparison({NAME: data})
    best = {side: config and (config.learning_rate, config.weight_decay) for side, config in result.best.items()}
    rows = []
    for c in result.configurations:
        median = "none" if c.median_steps is None else ("&ge; " if c.censored else "") + fmt(c.median_steps, 6)
        reached = f"{sum(not s.censored for s in c.seeds)}/{len(c.seeds)}"
        notes = [n for n, on in (("best", best[c.side] == (c.learning_rate, c.weight_decay)), ("untuned", c.untuned)) if on]
        rows.append(f"<tr><td>{e(c.side)}</td><td>{c.learning_rate:g}</td><td>{c.weight_decay:g}</td>"
                    f"<td>{median}</td><td>{reached}</td><td>{e(', '.join(notes))}</td></tr>")  # fmt: skip
    return (
        f"<table class='method-comparison'><tr><th>side</th><th>learning rate</th><th>weight decay</th><th>median steps to "
        f"{result.level:g} (budget {fmt(max((c.budget for c in result.configurations), default=None))})</th>"
        f"<th>seeds that reached it</th><th></th></tr>{''.join(rows)}</table>"
        f"<p>speed-up of the method, untuned: {e(_speed(result.untuned))}; tuned: {e(_speed(result.tuned))}</p>"
    )  # fmt: skip


SECTION = Section(
    NAME, "A method against a tuned baseline: steps to generalise", claims, figure, series=("test_acc",), table=table
)
