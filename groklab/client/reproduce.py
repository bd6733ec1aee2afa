"""`groklab reproduce`: the paper's experiments submitted to a running groklab, and one HTML report.

A scale is a folder of `examples/` holding one spec per experiment below (`ci`: P=47 for a 2-core
CPU; `paper`: the paper's sizes for GPU workers; `smoke`: seconds-long, to exercise the report).
The command submits them, draws a progress bar per experiment, and when all have finished writes
a self-contained HTML file: the figures (matplotlib, inline SVG) drawn from the stored series, the
claims table (each of docs/paper.md's claims, the measured value, a tolerance and a verdict read
from the server's analyses), both D_crit estimates with intervals, the environment and each
experiment's wall time.

The report folder keeps `manifest.json` (the server, the scale, the experiment ids and their
creation times), so `--resume DIR` re-attaches to those experiments instead of training them
again, and refuses a folder whose experiments this server did not create.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groklab.analysis_models import ExperimentAnalysis
from groklab.client import report
from groklab.client.errors import ApiError, ClientError
from groklab.client.report import Claim, ExperimentData
from groklab.client.report.figures import MissingLibrary, pyplot, svg
from groklab.client.report.html import render

if TYPE_CHECKING:
    # Only a type here: the client imports this module (in Client.reproduce), never the other way round.
    from groklab.client.http import Client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFEST = "manifest.json"


class ReproduceError(ClientError):
    """A reproduction that cannot start or go on: said in one line."""


def scales() -> list[str]:
    """The folders of examples/ that hold every experiment's spec."""
    names = report.experiments()
    return sorted(d.name for d in EXAMPLES.iterdir() if d.is_dir() and all((d / f"{n}.json").exists() for n in names))


def load_specs(scale: str, seeds: int | None) -> dict[str, dict[str, Any]]:
    """Each experiment's spec at `scale`; `seeds` N replaces every seeded experiment's seeds by 0..N-1."""
    known = scales()
    if scale not in known:
        raise ReproduceError(f"unknown scale {scale!r}: choose one of {', '.join(known)}")
    specs = {name: json.loads((EXAMPLES / scale / f"{name}.json").read_text()) for name in report.experiments()}
    if seeds is not None:
        if seeds < 1:
            raise ReproduceError(f"--seeds must be at least 1, not {seeds}")
        for section in report.sections():
            if section.seeded and section.name in specs:
                specs[section.name]["seeds"] = list(range(seeds))
    return specs


@dataclass
class Manifest:
    server: str
    scale: str
    seeds: int | None
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> {"id", "created_at"}"""

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.exists():
            raise ReproduceError(f"{folder} is not a report folder: it has no {MANIFEST}")
        return cls(**json.loads(path.read_text()))


def preflight(client: Client, specs: Mapping[str, Mapping[str, Any]], *, needs: str) -> None:
    """Everything a reproduction needs, checked in seconds before anything is submitted: the
    report's libraries, the server, the key and its scope, and every spec against the server's
    validation and limits (a dry run: a quota hit by the fifth experiment must not leave four
    training with no report to come)."""
    try:
        pyplot()
    except MissingLibrary as exc:
        raise ReproduceError(str(exc)) from exc
    identity = client.whoami()  # ServerUnreachable, or Unauthorized for a refused key
    if needs not in identity["scopes"]:
        raise ReproduceError(
            f"the API key of owner {identity['owner']!r} has the scopes {', '.join(identity['scopes'])}; "
            f"a reproduction needs {needs!r}"
        )
    for name, spec in specs.items():
        try:
            client.plan(spec)
        except ApiError as exc:
            raise ReproduceError(f"the server refuses the {name} experiment ({exc.status}): {exc.detail}") from exc


def submit(client: Client, scale: str, seeds: int | None, folder: Path) -> Manifest:
    """Submit every experiment of the scale; the manifest is saved after each, so an interrupted
    submission resumes with what it already sent."""
    specs = load_specs(scale, seeds)
    manifest = Manifest(server=client.base_url, scale=scale, seeds=seeds)
    for name, spec in specs.items():
        experiment = client.submit(spec)
        manifest.experiments[name] = {"id": experiment.id, "created_at": experiment.created_at}
        manifest.save(folder)
    return manifest


def check_manifest(client: Client, manifest: Manifest) -> None:
    """Refuse a report folder whose experiments this server did not create (same id, same time)."""
    for name, known in manifest.experiments.items():
        try:
            experiment = client.experiment(known["id"])
        except ApiError as exc:
            if exc.status != 404:
                raise
            experiment = None
        if experiment is None or experiment.created_at != known["created_at"]:
            raise ReproduceError(
                f"the report folder's {name} experiment ({known['id']}, made {known['created_at']} on "
                f"{manifest.server}) is not on the server at {client.base_url}: the folder comes from "
                "another server; start a new report instead of --resume"
            )


def wait(client: Client, manifest: Manifest, *, progress: bool, poll_seconds: float = 2.0) -> None:
    """Block until every run of every experiment has finished, a progress bar per experiment."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("run-steps {task.fields[steps]}"), TimeElapsedColumn(), disable=not progress)  # fmt: skip
    tasks = {name: bars.add_task(name, total=None, steps="") for name in manifest.experiments}
    with bars:
        while True:
            pending = 0
            for name, known in manifest.experiments.items():
                runs = client.runs(known["id"])
                done = sum(run.finished for run in runs)
                pending += len(runs) - done
                steps = f"{sum(r.step for r in runs):,}/{sum(r.total_steps for r in runs):,}"
                bars.update(tasks[name], total=len(runs), completed=done, steps=steps)
            if not pending:
                return
            time.sleep(poll_seconds)


# ---------------------------------------------------------------------------------------------
# What the report reads from the server.


def collect(client: Client, manifest: Manifest) -> dict[str, ExperimentData]:
    sections = {section.name: section for section in report.sections()}
    data = {}
    for name, known in manifest.experiments.items():
        experiment = client.experiment(known["id"])
        served = client.analysis(known["id"])
        # Parsed, so a server whose analysis has another shape fails here, naming the field.
        analysis = ExperimentAnalysis.model_validate(served)
        runs = client.runs(known["id"])
        series: dict[int, dict[str, list[tuple[int, float]]]] = {}
        for row in client.metrics([r.id for r in runs], sections[name].series, max_points=400) if runs else []:
            value = row.get("mean", row.get("value"))
            if value is not None:
                series.setdefault(row["run_id"], {}).setdefault(row["name"], []).append(
                    (row.get("step_end", row.get("step")), value)
                )
        data[name] = ExperimentData(name, experiment.id, experiment.spec, served["runs"], analysis, series, _wall_seconds(runs))
    return data


def _wall_seconds(runs: Sequence[Any]) -> float | None:
    starts = [r.started_at for r in runs if r.started_at]
    ends = [r.finished_at for r in runs if r.finished_at]
    if not starts or not ends:
        return None
    return (max(map(_time, ends)) - min(map(_time, starts))).total_seconds()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_report(client: Client, manifest: Manifest, out: Path) -> list[Claim]:
    data = collect(client, manifest)
    found = report.claims(data)
    svgs = {
        section.name: svg(lambda axes, draw=section.figure: draw(axes, data))
        for section in report.sections() if section.figure is not None
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(manifest.scale, manifest.server, data, found, svgs))
    return found


def reproduce(
    client: Client, *, scale: str | None, seeds: int | None, folder: Path, out: Path | None, resume: bool, progress: bool = True
) -> tuple[Path, list[Claim]]:
    """Submit (or, with resume, re-attach to) the scale's experiments, wait, and write the report."""
    if resume:
        manifest = Manifest.load(folder)
        if scale is not None and scale != manifest.scale:
            raise ReproduceError(f"{folder} holds a {manifest.scale!r} reproduction, not {scale!r}")
        preflight(client, {}, needs="read")
        check_manifest(client, manifest)
    else:
        if (folder / MANIFEST).exists():
            raise ReproduceError(f"{folder} already holds a reproduction: --resume {folder} to re-attach to it")
        specs = load_specs(scale or "ci", seeds)
        preflight(client, specs, needs="write")
        manifest = submit(client, scale or "ci", seeds, folder)
    wait(client, manifest, progress=progress)
    report = out or folder / "report.html"
    return report, write_report(client, manifest, report)
