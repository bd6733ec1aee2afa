"""The HTML report of `groklab reproduce`: one section per experiment of a scale, each with its
claims (docs/paper.md's statements, measured from the server's analyses, with a tolerance and a
verdict) and its figure, plus sections of claims that read several experiments (D_crit).

A section is one module of this package registered here in the report's order; adding an
experiment to the report is one module and its `examples/<scale>/<name>.json` files. The
orchestration (submit, wait, collect) is groklab/reproduce.py; the page itself, report/html.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PASS, FAIL, NOT_TESTABLE = "pass", "fail", "not testable"
DEFAULT_SERIES = ("train_acc", "test_acc")


@dataclass
class ExperimentData:
    """What the report reads from the server about one experiment."""

    name: str
    id: int
    spec: dict[str, Any]
    runs: list[dict[str, Any]]
    """The analysis' run rows (label, final accuracies, D, weight decay...)."""
    analysis: dict[str, Any]
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


_SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    _SECTIONS[section.name] = section
    return section


def unregister(name: str) -> None:
    _SECTIONS.pop(name, None)


def sections() -> list[Section]:
    """Every registered section in the report's order."""
    return list(_SECTIONS.values())


def experiments() -> dict[str, str]:
    """name -> title of every section that is an experiment (has a figure), in the report's order."""
    return {s.name: s.title for s in _SECTIONS.values() if s.figure is not None}


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    return [claim for section in _SECTIONS.values() for claim in section.claims(data)]


def rows(data: ExperimentData, **where: Any) -> list[dict[str, Any]]:
    """The experiment's succeeded runs' analysis rows matching `where`."""
    return [r for r in data.runs if r["status"] == "succeeded" and all(r.get(k) == v for k, v in where.items())]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _register_builtin() -> None:
    from groklab.client.report import d_crit, efficiency, grokking, semi_grokking, sweep, toy, ungrokking

    for module in (grokking, sweep, ungrokking, efficiency, d_crit, semi_grokking, toy):
        register(module.SECTION)


_register_builtin()
