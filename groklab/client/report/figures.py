"""matplotlib figures drawn to inline SVG (no file, no network needed to open the report)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from groklab.client.report.claims import ExperimentData


class MissingLibrary(RuntimeError):
    """A library the report needs is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; a base dependency, so a failure here is a
    broken install, said before anything is submitted (reproduce's preflight) rather than after
    hours of training."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingLibrary(
            f"the report's figures need matplotlib, which this install lacks ({exc}); reinstall groklab "
            "(bin/groklab does it) or pip install matplotlib"
        ) from exc
    return plt


def svg(draw: Callable[[Any], None], width: float = 7.0, height: float = 3.6) -> str:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(width, height))
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def curves(
    axes: Any, data: ExperimentData, label_of: Callable[[dict[str, Any]], str], names: Sequence[str] = ("test_acc",)
) -> None:
    """Every run's series over steps on a log axis, one line each."""
    for row in data.runs:
        for name in names:
            points = data.series.get(row["id"], {}).get(name, [])
            if points:
                steps, values = zip(*points)
                axes.plot([max(s, 1) for s in steps], values, label=f"{label_of(row)} {name}", linewidth=1.3)
    axes.set_xscale("log")
    axes.set_xlabel("step (log scale)")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
