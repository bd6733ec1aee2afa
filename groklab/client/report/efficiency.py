"""Circuit efficiency: each circuit's parameter norm at a fixed train loss against D."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groklab.analysis_models import Efficiency
from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData, Section

FLAT_SPREAD = 0.15
"""C_gen's norm at fixed loss counts as flat in D when (max - min) / mean over its sizes is below this."""


def _norms(eff: Efficiency, group: str) -> list[tuple[int, float]]:
    return [(c.train_size, c.param_norm_at_loss) for c in getattr(eff, group) if c.param_norm_at_loss is not None]


def _settled(eff: Efficiency, group: str) -> str:
    # The estimate is only as good as the sweep's nets had settled: say how far they still moved.
    moved = [c.max_param_norm_drift for c in getattr(eff, group) if c.max_param_norm_drift is not None]
    return f" (norms still moving up to {max(moved):.0%} over their runs' last quarter)" if moved else ""


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    eff = data["efficiency"].analysis.efficiency
    mem, gen = _norms(eff, "memorise"), _norms(eff, "generalise")
    rising = len(mem) >= 2 and all(a[1] < b[1] for a, b in zip(mem, mem[1:]))
    spread = (max(n for _, n in gen) - min(n for _, n in gen)) / (sum(n for _, n in gen) / len(gen)) if len(gen) >= 2 else None
    return [
        Claim("efficiency", "C_mem's parameter norm at fixed train loss grows with D",
              "memorisation's norm rises with D (Fig. 3)",
              (", ".join(f"D={d}: {n:.1f}" for d, n in mem) or eff.reason or "none") + _settled(eff, "memorise"),
              "strictly increasing", (PASS if rising else FAIL) if len(mem) >= 2 else NOT_TESTABLE),
        Claim("efficiency", "C_gen's parameter norm at fixed train loss is flat in D",
              "generalisation's norm does not depend on D (Fig. 3)",
              (", ".join(f"D={d}: {n:.1f}" for d, n in gen) or "none") + _settled(eff, "generalise"),
              f"(max - min) / mean < {FLAT_SPREAD}",
              NOT_TESTABLE if spread is None else PASS if spread < FLAT_SPREAD else FAIL),
    ]  # fmt: skip


def figure(axes: Any, data: Mapping[str, ExperimentData]) -> None:
    eff = data["efficiency"].analysis.efficiency
    for group, style in (("memorise", "o-"), ("generalise", "s-")):
        points = _norms(eff, group)
        if points:
            axes.plot(*zip(*points), style, label=f"C_{group[:3]} (norm at train loss {eff.loss:g})")
    if eff.d_crit is not None:
        axes.axvline(eff.d_crit, color="tab:red", linestyle="--", label=f"crossing {eff.d_crit:.0f}")
    axes.set_xscale("log")
    axes.set_xlabel("D (log scale)")
    axes.set_ylabel("parameter norm")
    axes.legend(fontsize=7)


SECTION = Section("efficiency", "Efficiency: parameter norm at fixed train loss vs D", claims, figure)
