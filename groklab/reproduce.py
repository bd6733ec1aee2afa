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

import html
import io
import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from groklab.client import ApiError, Client, ClientError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The experiments of a scale, each `examples/<scale>/<name>.json`, in the report's order.
EXPERIMENTS = {
    "grokking": "Grokking: memorise first, generalise much later",
    "sweep": "Test accuracy and grokking delay vs training fraction",
    "ungrokking": "Ungrokking: final test accuracy vs D'",
    "semi_grokking": "Semi-grokking near D_crit",
    "efficiency": "Efficiency: parameter norm at fixed train loss vs D",
    "toy": "The Section 3 toy model and its ablations",
}
MANIFEST = "manifest.json"
FLAT_SPREAD = 0.15
"""C_gen's norm at fixed loss counts as flat in D when (max - min) / mean over its sizes is below this."""
PASS, FAIL, NOT_TESTABLE = "pass", "fail", "not testable"


class ReproduceError(ClientError):
    """A reproduction that cannot start or go on: said in one line."""


def scales() -> list[str]:
    """The folders of examples/ that hold every experiment's spec."""
    return sorted(d.name for d in EXAMPLES.iterdir() if d.is_dir() and all((d / f"{n}.json").exists() for n in EXPERIMENTS))


def load_specs(scale: str, seeds: int | None) -> dict[str, dict[str, Any]]:
    """Each experiment's spec at `scale`; `seeds` N replaces every seeded experiment's seeds by 0..N-1."""
    known = scales()
    if scale not in known:
        raise ReproduceError(f"unknown scale {scale!r}: choose one of {', '.join(known)}")
    specs = {name: json.loads((EXAMPLES / scale / f"{name}.json").read_text()) for name in EXPERIMENTS}
    if seeds is not None:
        if seeds < 1:
            raise ReproduceError(f"--seeds must be at least 1, not {seeds}")
        for name, spec in specs.items():
            if name != "toy":
                spec["seeds"] = list(range(seeds))
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
    _pyplot()
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


@dataclass
class ExperimentData:
    name: str
    id: int
    spec: dict[str, Any]
    runs: list[dict[str, Any]]
    """The analysis' run rows (label, final accuracies, D, weight decay...)."""
    analysis: dict[str, Any]
    series: dict[int, dict[str, list[tuple[int, float]]]]
    """run id -> name -> [(step, value)]"""
    wall_seconds: float | None


SERIES = {"toy": ("train_acc", "test_acc", "w_gen", "w_mem")}
DEFAULT_SERIES = ("train_acc", "test_acc")


def collect(client: Client, manifest: Manifest) -> dict[str, ExperimentData]:
    data = {}
    for name, known in manifest.experiments.items():
        experiment = client.experiment(known["id"])
        analysis = client.analysis(known["id"])
        runs = client.runs(known["id"])
        series: dict[int, dict[str, list[tuple[int, float]]]] = {}
        for row in client.metrics([r.id for r in runs], SERIES.get(name, DEFAULT_SERIES), max_points=400) if runs else []:
            value = row.get("mean", row.get("value"))
            if value is not None:
                series.setdefault(row["run_id"], {}).setdefault(row["name"], []).append((row.get("step_end", row.get("step")), value))
        data[name] = ExperimentData(name, experiment.id, experiment.spec, analysis["runs"], analysis, series, _wall_seconds(runs))
    return data


def _wall_seconds(runs: Sequence[Any]) -> float | None:
    starts = [r.started_at for r in runs if r.started_at]
    ends = [r.finished_at for r in runs if r.finished_at]
    if not starts or not ends:
        return None
    return (max(map(_time, ends)) - min(map(_time, starts))).total_seconds()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------------------------
# Claims: docs/paper.md's statements, each measured from the analyses with a tolerance.


@dataclass(frozen=True)
class Claim:
    experiment: str
    claim: str
    reference: str
    measured: str
    tolerance: str
    verdict: str


def _rows(data: ExperimentData, **where: Any) -> list[dict[str, Any]]:
    return [r for r in data.runs if r["status"] == "succeeded" and all(r.get(k) == v for k, v in where.items())]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def claims(data: Mapping[str, ExperimentData]) -> list[Claim]:
    out: list[Claim] = []
    add = out.append

    grok = data["grokking"]
    for row in sorted(_rows(grok), key=lambda r: r["weight_decay"]):
        mem, gen = row["memorisation_step"], row["generalisation_step"]
        ratio = gen / mem if mem and gen else None
        add(Claim("grokking", f"wd {row['weight_decay']:g}: test accuracy generalises long after train accuracy memorises",
                  "P=47, half the pairs: memorised by ~200 steps, test accuracy ~0.96 by ~1,400 (docs/paper.md)",
                  f"memorised at {mem}, generalised at {gen}" + (f" ({ratio:.1f}x)" if ratio else "") + f", label {row['label']}",
                  "generalised at >= 2x the memorisation step",
                  PASS if ratio is not None and ratio >= 2 else FAIL))  # fmt: skip

    sweep = data["sweep"]
    rows = sorted(_rows(sweep), key=lambda r: r["train_size"])
    delays = [(r["train_size"], r["generalisation_step"]) for r in rows]
    def late(step: int | None) -> float:
        return math.inf if step is None else step

    monotone = len(delays) >= 2 and all(late(a[1]) >= late(b[1]) for a, b in zip(delays, delays[1:]))
    add(Claim("sweep", "more training data generalises sooner (grokking delay falls as D grows)",
              "half the pairs generalise within ~1,000 steps at P=113, 60% and more with no delay",
              ", ".join(f"D={d}: step {s}" for d, s in delays) or "no succeeded runs",
              "generalisation step non-increasing in D (never = infinitely late)",
              # No run generalising in its budget orders nothing: the claim is untested, not passed.
              (PASS if monotone else FAIL) if len(delays) >= 2 and any(s is not None for _, s in delays) else NOT_TESTABLE))  # fmt: skip

    ung = data["ungrokking"]
    phase2 = sorted(_rows(ung, role="phase2"), key=lambda r: r["train_size"])
    if phase2:
        smallest, largest = phase2[0], phase2[-1]
        add(Claim("ungrokking", f"the smallest D' ({smallest['train_size']}) ungroks",
                  "small D' fall to near chance (P=47: D'=100 ends near 0.08)",
                  f"final test accuracy {_fmt(smallest['final_test_acc'])}", "< 0.3",
                  PASS if smallest["final_test_acc"] < 0.3 else FAIL))  # fmt: skip
        add(Claim("ungrokking", f"the largest D' ({largest['train_size']}) keeps its accuracy",
                  "the largest D' end near 1 (P=47: 600 and more at 1.0)",
                  f"final test accuracy {_fmt(largest['final_test_acc'])}", ">= 0.9",
                  PASS if largest["final_test_acc"] >= 0.9 else FAIL))  # fmt: skip
    decays = sorted({r["weight_decay"] for r in phase2})
    collapse = ung.analysis["weight_decay_collapse"].get("phase2", {})
    add(Claim("ungrokking", "curves for different weight decays overlap",
              "the accuracy D' ends with does not depend on weight decay (Fig. 7)",
              f"max gap {_fmt(collapse.get('max_gap'))} over weight decays {decays}", "max gap < 0.15",
              NOT_TESTABLE if len(decays) < 2 or collapse.get("max_gap") is None
              else PASS if collapse["max_gap"] < 0.15 else FAIL))  # fmt: skip

    eff = data["efficiency"].analysis["efficiency"]
    mem = [(c["train_size"], c["param_norm_at_loss"]) for c in eff["memorise"] if c["param_norm_at_loss"] is not None]
    gen = [(c["train_size"], c["param_norm_at_loss"]) for c in eff["generalise"] if c["param_norm_at_loss"] is not None]
    rising = len(mem) >= 2 and all(a[1] < b[1] for a, b in zip(mem, mem[1:]))

    def settled(group: str) -> str:
        # The estimate is only as good as the sweep's nets had settled: say how far they still moved.
        moved = [c["max_param_norm_drift"] for c in eff[group] if c.get("max_param_norm_drift") is not None]
        return f" (norms still moving up to {max(moved):.0%} over their runs' last quarter)" if moved else ""

    add(Claim("efficiency", "C_mem's parameter norm at fixed train loss grows with D",
              "memorisation's norm rises with D (Fig. 3)",
              (", ".join(f"D={d}: {n:.1f}" for d, n in mem) or eff["reason"] or "none") + settled("memorise"),
              "strictly increasing", (PASS if rising else FAIL) if len(mem) >= 2 else NOT_TESTABLE))  # fmt: skip
    spread = (max(n for _, n in gen) - min(n for _, n in gen)) / (sum(n for _, n in gen) / len(gen)) if len(gen) >= 2 else None
    add(Claim("efficiency", "C_gen's parameter norm at fixed train loss is flat in D",
              "generalisation's norm does not depend on D (Fig. 3)",
              (", ".join(f"D={d}: {n:.1f}" for d, n in gen) or "none") + settled("generalise"), f"(max - min) / mean < {FLAT_SPREAD}",
              NOT_TESTABLE if spread is None else PASS if spread < FLAT_SPREAD else FAIL))  # fmt: skip

    ungrok_d = ung.analysis["d_crit"].get("phase2", {}).get("pooled", {})
    scratch = scratch_d_crit(data)
    both = ungrok_d.get("d_crit") is not None and scratch["d_crit"] is not None
    add(Claim("D_crit", "D_crit from ungrokking lies below D_crit from training from scratch",
              "ungrokking ~800-1,000 and from scratch ~1,500-2,050 at P=113",
              f"ungrokking {_fmt(ungrok_d.get('d_crit'))}, from scratch {_fmt(scratch['d_crit'])}"
              + ("" if both else f" ({ungrok_d.get('reason') or scratch['reason']})"),
              "ungrokking < from scratch", (PASS if ungrok_d["d_crit"] < scratch["d_crit"] else FAIL) if both else NOT_TESTABLE))  # fmt: skip
    if eff["d_crit"] is not None or ungrok_d.get("d_crit") is not None:
        add(Claim("D_crit", "the efficiency crossing lies near the ungrokking D_crit",
                  "both estimate one D_crit (~500-1,000 and ~800-1,000 at P=113)",
                  f"efficiency {_fmt(eff['d_crit'])}, ungrokking {_fmt(ungrok_d.get('d_crit'))}",
                  "within a factor of 2",
                  NOT_TESTABLE if eff["d_crit"] is None or ungrok_d.get("d_crit") is None
                  else PASS if 0.5 <= eff["d_crit"] / ungrok_d["d_crit"] <= 2 else FAIL))  # fmt: skip

    semi = _rows(data["semi_grokking"])
    labels = sorted({r["label"] for r in semi})
    shown = any(r["label"] == "semi_grokked" for r in semi)
    add(Claim("semi_grokking", "near D_crit, generalisation can stop part-way (semi-grokking)",
              "semi-grokking needs long runs near D_crit (the paper's sat at ~0.55 for ~10^7 steps)",
              f"labels {labels}, final test accuracies {[_fmt(r['final_test_acc']) for r in semi]}",
              "a run labelled semi_grokked",
              PASS if shown else NOT_TESTABLE))  # fmt: skip

    toy = {r["role"]: r for r in _rows(data["toy"])}
    never = ("never reaches generalised_acc", lambda r: r["generalisation_step"] is None)
    expected = {
        "full": ("grokking: a delay, then generalisation", ("label grokked", lambda r: r["label"] == "grokked")),
        "gen_less_efficient": ("a less efficient C_gen never wins", never),
        "no_speed_difference": ("equal learning speeds remove the delay",
                                ("label generalised_without_delay", lambda r: r["label"] == "generalised_without_delay")),
        "no_weight_decay": ("without weight decay memorisation is never undone", never),
    }  # fmt: skip
    for role, (text, (tolerance, holds)) in expected.items():
        row = toy.get(role)
        add(Claim("toy", f"{role}: {text}", "Section 3's toy model (docs/paper.md)",
                  f"label {row['label']}, generalised at {row['generalisation_step']}" if row else "no succeeded run",
                  tolerance, NOT_TESTABLE if row is None else PASS if holds(row) else FAIL))  # fmt: skip
    return out


def scratch_d_crit(data: Mapping[str, ExperimentData]) -> dict[str, Any]:
    """D_crit from runs trained from scratch: final test accuracy vs D over the sweep, grokking and
    semi-grokking runs, crossing 0.5.

    Their step budgets differ, and a run that has not generalised in a short budget says nothing
    about a D that a longer one generalises (at P=47, D=883 is still memorising at 2,000 steps
    while D=700 generalises by ~21,000). So a run counts if it generalised (reached 0.5), at any
    budget, or if it had the longest budget of them all; the others are listed in `left_out`.
    """
    from groklab.analysis import CROSSING_LEVEL, d_crit

    rows = [row for name in ("sweep", "grokking", "semi_grokking") for row in _rows(data[name])
            if row["final_test_acc"] is not None]
    longest = max((row["total_steps"] for row in rows), default=None)
    by_size: dict[int, list[float]] = {}
    left_out = []
    for row in rows:
        if row["final_test_acc"] >= CROSSING_LEVEL or row["total_steps"] == longest:
            by_size.setdefault(row["train_size"], []).append(row["final_test_acc"])
        else:
            left_out.append({"run_id": row["id"], "train_size": row["train_size"], "total_steps": row["total_steps"]})
    return {**d_crit(by_size), "longest_budget": longest, "left_out": left_out}


# ---------------------------------------------------------------------------------------------
# Figures: matplotlib drawn to inline SVG.


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; a base dependency, so a failure here is a
    broken install, said before anything is submitted (preflight) rather than after hours of training."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ReproduceError(
            f"the report's figures need matplotlib, which this install lacks ({exc}); reinstall groklab "
            "(bin/groklab does it) or pip install matplotlib"
        ) from exc
    return plt


def _svg(draw: Callable[[Any], None], width: float = 7.0, height: float = 3.6) -> str:
    plt = _pyplot()

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


def _curves(axes: Any, data: ExperimentData, label_of: Callable[[dict[str, Any]], str], names: Sequence[str] = ("test_acc",)) -> None:
    for row in data.runs:
        for name in names:
            points = data.series.get(row["id"], {}).get(name, [])
            if points:
                steps, values = zip(*points)
                axes.plot([max(s, 1) for s in steps], values, label=f"{label_of(row)} {name}", linewidth=1.3)
    axes.set_xscale("log")
    axes.set_xlabel("step (log scale)")
    axes.legend(fontsize=7)


def figures(data: Mapping[str, ExperimentData]) -> dict[str, str]:
    out = {}

    def grokking(axes: Any) -> None:
        _curves(axes, data["grokking"], lambda r: f"wd {r['weight_decay']:g}", ("train_acc", "test_acc"))
        axes.set_ylabel("accuracy")

    out["grokking"] = _svg(grokking)

    def sweep(axes: Any) -> None:
        rows = sorted(_rows(data["sweep"]), key=lambda r: r["train_size"])
        axes.plot([r["train_size"] for r in rows], [r["final_test_acc"] for r in rows], "o-", label="final test accuracy")
        axes.set_xlabel("D (training pairs)")
        axes.set_ylabel("final test accuracy")
        twin = axes.twinx()
        twin.plot([r["train_size"] for r in rows], [r["grokking_delay"] if r["grokking_delay"] is not None else math.nan for r in rows],
                  "s--", color="tab:orange", label="grokking delay")  # fmt: skip
        twin.set_ylabel("grokking delay (steps)")
        axes.legend(loc="upper left", fontsize=7)
        twin.legend(loc="lower right", fontsize=7)

    out["sweep"] = _svg(sweep)

    def ungrokking(axes: Any) -> None:
        analysis = data["ungrokking"].analysis
        for wd in sorted({p["weight_decay"] for p in analysis["accuracy_vs_train_size"] if p["role"] == "phase2"}):
            points = sorted((p for p in analysis["accuracy_vs_train_size"] if p["role"] == "phase2" and p["weight_decay"] == wd),
                            key=lambda p: p["train_size"])  # fmt: skip
            axes.errorbar([p["train_size"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                          marker="o", capsize=3, label=f"wd {wd:g}")  # fmt: skip
        pooled = analysis["d_crit"].get("phase2", {}).get("pooled", {})
        if pooled.get("d_crit") is not None:
            axes.axvline(pooled["d_crit"], color="tab:red", linestyle="--", label=f"D_crit {pooled['d_crit']:.0f}")
        axes.set_xscale("log")
        axes.set_xlabel("D' (log scale)")
        axes.set_ylabel("final test accuracy")
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize=7)

    out["ungrokking"] = _svg(ungrokking)

    def semi(axes: Any) -> None:
        _curves(axes, data["semi_grokking"], lambda r: f"D={r['train_size']} ({r['label']})")
        axes.set_ylabel("test accuracy")

    out["semi_grokking"] = _svg(semi)

    def efficiency(axes: Any) -> None:
        eff = data["efficiency"].analysis["efficiency"]
        for group, style in (("memorise", "o-"), ("generalise", "s-")):
            points = [(c["train_size"], c["param_norm_at_loss"]) for c in eff[group] if c["param_norm_at_loss"] is not None]
            if points:
                axes.plot(*zip(*points), style, label=f"C_{group[:3]} (norm at train loss {eff['loss']:g})")
        if eff["d_crit"] is not None:
            axes.axvline(eff["d_crit"], color="tab:red", linestyle="--", label=f"crossing {eff['d_crit']:.0f}")
        axes.set_xscale("log")
        axes.set_xlabel("D (log scale)")
        axes.set_ylabel("parameter norm")
        axes.legend(fontsize=7)

    out["efficiency"] = _svg(efficiency)

    def toy(axes: Any) -> None:
        _curves(axes, data["toy"], lambda r: r["role"])
        axes.set_ylabel("test accuracy")

    out["toy"] = _svg(toy)
    return out


# ---------------------------------------------------------------------------------------------
# The HTML file.

STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}.pass{color:#176a1d;font-weight:600}.fail{color:#b00020;font-weight:600}.not-testable{color:#7a6000}
figure{margin:1.5em 0}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}"""


def render(manifest: Manifest, data: Mapping[str, ExperimentData], found: Sequence[Claim], svgs: Mapping[str, str]) -> str:
    e = html.escape
    ungrok = data["ungrokking"].analysis["d_crit"].get("phase2", {}).get("pooled", {})
    scratch = scratch_d_crit(data)
    eff = data["efficiency"].analysis["efficiency"]
    left_out = ", ".join(f"D={r['train_size']} ({r['total_steps']} steps)" for r in scratch["left_out"])

    def interval(estimate: Mapping[str, Any]) -> str:
        if estimate.get("d_crit") is None:
            return f"none ({e(str(estimate.get('reason')))})"
        bounds = estimate.get("interval")
        return f"{estimate['d_crit']:.0f}" + (f", 95% bootstrap interval over seeds [{bounds[0]:.0f}, {bounds[1]:.0f}]" if bounds else "")

    counts = {v: sum(c.verdict == v for c in found) for v in (PASS, FAIL, NOT_TESTABLE)}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>groklab reproduction ({e(manifest.scale)})</title><style>{STYLE}</style></head><body>",
        f"<h1>Reproducing Varma et al. (2023) at scale <code>{e(manifest.scale)}</code></h1>",
        f"<p id='summary'>{counts[PASS]} claims pass, {counts[FAIL]} fail, {counts[NOT_TESTABLE]} cannot be tested at this scale.</p>",
        "<h2>Claims</h2><table id='claims'><tr><th>experiment</th><th>claim</th><th>paper / docs</th><th>measured</th><th>tolerance</th><th>verdict</th></tr>",
        *(f"<tr><td>{e(c.experiment)}</td><td>{e(c.claim)}</td><td>{e(c.reference)}</td><td>{e(c.measured)}</td><td>{e(c.tolerance)}</td>"
          f"<td class='{c.verdict.replace(' ', '-')}'>{e(c.verdict)}</td></tr>" for c in found),  # fmt: skip
        "</table>",
        "<h2>D_crit</h2><ul id='d-crit'>",
        f"<li>ungrokking (phase 2 on D'): {interval(ungrok)}</li>",
        f"<li>from scratch (sweep, grokking and semi-grokking runs together; a run below 0.5 counts only at the longest budget, "
        f"{scratch['longest_budget']} steps; left out: {e(left_out or 'none')}): "
        f"{interval(scratch)}</li>",
        f"<li>efficiency crossing (memorising vs generalising norm at train loss {eff['loss']:g}): {interval(eff)}</li></ul>",
    ]
    for name, title in EXPERIMENTS.items():
        d = data[name]
        wall = f"{d.wall_seconds:.0f} s" if d.wall_seconds is not None else "unknown"
        run_ids = ", ".join(str(r["id"]) for r in d.runs)
        parts.append(f"<figure id='figure-{name}'><h2>{e(title)}</h2>{svgs[name]}<figcaption>experiment {d.id}, "
                     f"runs {e(run_ids)}; wall time {wall}</figcaption>"
                     f"<details><summary>spec</summary><pre>{e(json.dumps(d.spec, indent=2))}</pre></details></figure>")  # fmt: skip
    devices = sorted({str(r.get("device", "")) for d in data.values() for r in [d.spec.get("base", {})]} - {""}) or ["the workers' default"]
    parts += [
        "<h2>Environment</h2><ul id='environment'>",
        f"<li>groklab {e(_version('groklab'))}, torch {e(_version('torch'))}, Python {e(platform.python_version())}</li>",
        f"<li>server {e(manifest.server)}; device {e(', '.join(devices))}</li>",
        f"<li>report written {datetime.now(timezone.utc).isoformat(timespec='seconds')}</li></ul>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def write_report(client: Client, manifest: Manifest, out: Path) -> list[Claim]:
    data = collect(client, manifest)
    found = claims(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(manifest, data, found, figures(data)))
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
