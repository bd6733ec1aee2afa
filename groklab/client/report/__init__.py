"""The HTML report of `groklab reproduce`: one section per experiment of a scale, each with its
claims (docs/paper.md's statements, measured from the server's analyses, with a tolerance and a
verdict) and its figure, plus sections of claims that read several experiments (D_crit).

A section is one module of this package registered here in the report's order; adding an
experiment to the report is one module and its `examples/<scale>/<name>.json` files. What a
section is made of (claims, data, verdicts): report/claims.py; drawing a figure as SVG:
report/figures.py; the page itself: report/html.py. The orchestration (submit, wait, collect) is
groklab/client/reproduce.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from groklab.client.report.claims import (
    DEFAULT_SERIES,
    FAIL,
    NOT_TESTABLE,
    PASS,
    Claim,
    Claims,
    ExperimentData,
    Figure,
    Section,
    fmt,
    rows,
)

__all__ = [
    "DEFAULT_SERIES",
    "FAIL",
    "NOT_TESTABLE",
    "PASS",
    "Claim",
    "Claims",
    "ExperimentData",
    "Figure",
    "Section",
    "claims",
    "experiments",
    "fmt",
    "register",
    "rows",
    "sections",
    "tables",
    "unregister",
]

_SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    _SECTIONS[section.name] = section
    return section


def unregister(name: str) -> None:
    _SECTIONS.pop(name, None)


def sections() -> list[Section]:
    """Every registered section in the report's order."""
    return list(_SECTIONS.values())


def tables(data: Mapping[str, ExperimentData]) -> dict[str, str]:
    """name -> the HTML table of every section that has one and whose experiment is in `data`."""
    return {s.name: s.table(data[s.name]) for s in _SECTIONS.values() if s.table is not None and s.name in data}


def experiments() -> dict[str, str]:
    """name -> title of every section that is an experiment (has a figure), in the report's order."""
    return {s.name: s.title for s in _SECTIONS.values() if s.figure is not None}


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    return [claim for section in _SECTIONS.values() for claim in section.claims(data)]


def _register_builtin() -> None:
    from groklab.client.report import (
        d_crit, efficiency, grokking, method_comparison, semi_grokking, sweep, toy, ungrokking,
    )  # fmt: skip

    for module in (grokking, sweep, ungrokking, efficiency, d_crit, semi_grokking, toy, method_comparison):
        register(module.SECTION)


_register_builtin()
