"""What a report section is made of: the data it reads of an experiment, a claim with its
verdict, and the section itself (claims and figure); with the helpers the sections share.

The sections (one module each in this package) import from here, and the registry
(report/__init__.py) imports the sections: one way, no import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from groklab.analysis_models import ExperimentAnalysis

PASS, FAIL, NOT_TESTABLE = "pass", "fail", "not testable"
DEFAULT_SERIES = ("train_acc", "test_acc")


@dataclass
class ExperimentData:
    """What the report reads from the server about one experiment."""

    name: str
    id: int
    spec: dict[str, Any]
    runs: list[dict[str, Any]]
    """The analysis' run rows (label, final accuracies, D, weight decay...) as JSON objects, which
    `rows` filters by key; their model is groklab.analysis_models.RunRow."""
    analysis: ExperimentAnalysis
    """The server's experiment analysis, parsed."""
    series: dict[int, dict[str, list[tuple[int, float]]]]
    """run id -> name -> [(step, value)]"""
    wall_seconds: float | None


@dataclass(frozen=True)
class Claim:
    experiment: str
    claim: str
    reference: str
    measured: str
    tolerance: str
    verdict: str


Claims = Callable[[Mapping[str, ExperimentData]], list[Claim]]
Figure = Callable[[Any, Mapping[str, ExperimentData]], None]
"""Draws on matplotlib axes from every experiment's data."""
Table = Callable[[ExperimentData], str]
"""An HTML table (escaped) of the section's own experiment, shown under its figure."""


@dataclass(frozen=True)
class Section:
    name: str
    """The experiment's name in a scale's folder (examples/<scale>/<name>.json); for a section
    without an experiment of its own (figure None), the claims' heading."""
    title: str
    claims: Claims
    figure: Figure | None = None
    series: Sequence[str] = DEFAULT_SERIES
    """The metric series its figure draws, fetched for each of its runs."""
    seeded: bool = True
    """Whether `--seeds N` replaces its spec's seeds."""
    table: Table | None = None


def rows(data: ExperimentData, **where: Any) -> list[dict[str, Any]]:
    """The experiment's succeeded runs' analysis rows matching `where`."""
    return [r for r in data.runs if r["status"] == "succeeded" and all(r.get(k) == v for k, v in where.items())]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
