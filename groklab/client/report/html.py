"""The report as one self-contained HTML page: the claims table, the D_crit estimates, a figure per
experiment with its spec and wall time, and the environment."""

from __future__ import annotations

import html
import json
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, UTC
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from groklab.client.report import experiments, tables
from groklab.client.report.claims import FAIL, NOT_TESTABLE, PASS, Claim, ExperimentData
from groklab.client.report.d_crit import scratch_d_crit, ungrokking_d_crit

STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}.pass{color:#176a1d;font-weight:600}.fail{color:#b00020;font-weight:600}.not-testable{color:#7a6000}
figure{margin:1.5em 0}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}"""


def _interval(estimate: Mapping[str, Any] | BaseModel | None) -> str:
    """An estimate's D_crit and interval: a model of groklab.analysis_models, or scratch_d_crit's dict."""
    if isinstance(estimate, BaseModel):
        estimate = estimate.model_dump()
    estimate = estimate or {"reason": "no run succeeded"}
    if estimate.get("d_crit") is None:
        return f"none ({html.escape(str(estimate.get('reason')))})"
    bounds = estimate.get("interval")
    return f"{estimate['d_crit']:.0f}" + (
        f", 95% bootstrap interval over seeds [{bounds[0]:.0f}, {bounds[1]:.0f}]" if bounds else ""
    )


def _claims_table(found: Sequence[Claim]) -> list[str]:
    e = html.escape
    return [
        "<h2>Claims</h2><table id='claims'><tr><th>experiment</th><th>claim</th><th>paper / docs</th><th>measured</th><th>tolerance</th><th>verdict</th></tr>",
        *(f"<tr><td>{e(c.experiment)}</td><td>{e(c.claim)}</td><td>{e(c.reference)}</td><td>{e(c.measured)}</td><td>{e(c.tolerance)}</td>"
          f"<td class='{c.verdict.replace(' ', '-')}'>{e(c.verdict)}</td></tr>" for c in found),
        "</table>",
    ]  # fmt: skip


def _d_crit_list(data: Mapping[str, ExperimentData]) -> list[str]:
    scratch, eff = scratch_d_crit(data), data["efficiency"].analysis.efficiency
    left_out = ", ".join(f"D={r['train_size']} ({r['total_steps']} steps)" for r in scratch["left_out"])
    return [
        "<h2>D_crit</h2><ul id='d-crit'>",
        f"<li>ungrokking (phase 2 on D'): {_interval(ungrokking_d_crit(data))}</li>",
        f"<li>from scratch (sweep, grokking and semi-grokking runs together; a run below 0.5 counts only at the longest budget, "
        f"{scratch['longest_budget']} steps; left out: {html.escape(left_out or 'none')}): {_interval(scratch)}</li>",
        f"<li>efficiency crossing (memorising vs generalising norm at train loss {eff.loss:g}): {_interval(eff)}</li></ul>",
    ]  # fmt: skip


def _figure(name: str, title: str, d: ExperimentData, svg: str, table: str = "") -> str:
    e = html.escape
    wall = f"{d.wall_seconds:.0f} s" if d.wall_seconds is not None else "unknown"
    run_ids = ", ".join(str(r["id"]) for r in d.runs)
    return (f"<figure id='figure-{name}'><h2>{e(title)}</h2>{svg}<figcaption>experiment {d.id}, runs {e(run_ids)}; "
            f"wall time {wall}</figcaption>{table}<details><summary>spec</summary><pre>{e(json.dumps(d.spec, indent=2))}</pre>"
            "</details></figure>")  # fmt: skip


def render(scale: str, server: str, data: Mapping[str, ExperimentData], found: Sequence[Claim], svgs: Mapping[str, str]) -> str:
    e = html.escape
    counts = {v: sum(c.verdict == v for c in found) for v in (PASS, FAIL, NOT_TESTABLE)}
    devices = sorted({str(d.spec.get("base", {}).get("device", "")) for d in data.values()} - {""}) or ["the workers' default"]
    shown = tables(data)
    return "\n".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>groklab reproduction ({e(scale)})</title><style>{STYLE}</style></head><body>",
        f"<h1>Reproducing Varma et al. (2023) at scale <code>{e(scale)}</code></h1>",
        f"<p id='summary'>{counts[PASS]} claims pass, {counts[FAIL]} fail, {counts[NOT_TESTABLE]} cannot be tested at this scale.</p>",
        *_claims_table(found),
        *_d_crit_list(data),
        *(_figure(name, title, data[name], svgs[name], shown.get(name, "")) for name, title in experiments().items()),
        "<h2>Environment</h2><ul id='environment'>",
        f"<li>groklab {e(_version('groklab'))}, torch {e(_version('torch'))}, Python {e(platform.python_version())}</li>",
        f"<li>server {e(server)}; device {e(', '.join(devices))}</li>",
        f"<li>report written {datetime.now(UTC).isoformat(timespec='seconds')}</li></ul>",
        "</body></html>",
    ])  # fmt: skip


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
