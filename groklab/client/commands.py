"""The client side of the `groklab` command: submit, status, watch, metrics, cancel, delete over HTTP."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from groklab.analysis_models import ExperimentAnalysis
from groklab.client.errors import ApiError, ClientError
from groklab.client.http import (
    Client,
    Experiment,
    flat_fields,
    load_spec,
    watch_runs,
)
from groklab.lifecycle import CANCELLED, FAILED, SUCCEEDED
from groklab.settings import comma_list


def add_client_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the client subcommands to the `groklab` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the api's base URL (GROKLAB_URL; default http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="an API key (GROKLAB_API_KEY), when the api requires one")
    # In this order in `groklab --help`.
    _add_submit_and_find_commands(commands, common)
    _add_run_commands(commands, common)
    _add_experiment_commands(commands, common)


def _add_submit_and_find_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """submit, status, watch, metrics, runs."""
    submit = commands.add_parser("submit", parents=[common], help="submit an experiment spec (JSON or YAML file)")
    submit.add_argument("spec", help="path of a .json, .yaml or .yml spec")
    submit.add_argument("--watch", action="store_true", help="then watch its runs until they finish")
    submit.add_argument(
        "--dry-run", action="store_true", help="check the spec against the server's validation and limits; store nothing"
    )

    status = commands.add_parser("status", parents=[common], help="experiments, or one experiment's runs")
    status.add_argument("experiment", nargs="?", type=int, metavar="EXP")

    watch = commands.add_parser("watch", parents=[common], help="progress bars until the runs finish")
    watch.add_argument("target", metavar="RUN|exp:EXP", help="a run id (7), or exp:3 for every run of experiment 3")

    metrics = commands.add_parser("metrics", parents=[common], help="a run's metric series")
    metrics.add_argument("run", type=int, metavar="RUN")
    metrics.add_argument("--csv", action="store_true", help="every row as CSV on stdout")
    metrics.add_argument("--names", help="comma-separated series names (default all)")
    metrics.add_argument("--max-points", type=int, help="downsample each series to this many buckets")

    runs = commands.add_parser(
        "runs", parents=[common], help="find runs by spec fields, label, status and tags; sorted by any column"
    )
    runs.add_argument("--experiment", type=int, metavar="EXP", help="only this experiment's runs")
    runs.add_argument(
        "--where", action="append", default=[], metavar="PATH=VALUE",
        help="a spec field's value, e.g. task.train_size=1000 (repeatable; VALUE read as JSON, else text)",
    )  # fmt: skip
    runs.add_argument("--label", help="comma-separated analysis labels, e.g. grokked,semi_grokked")
    runs.add_argument("--status", help="comma-separated statuses")
    runs.add_argument("--tag", action="append", default=[], metavar="KEY[=VALUE]", help="a tag (repeatable)")
    runs.add_argument("--sort", help="a column, label, final_<series> or spec.<path>; -COLUMN descends")
    runs.add_argument("--json", action="store_true", help="one JSON object a run on stdout")


def _add_run_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """tag, cancel, checkpoint, continue."""
    tag = commands.add_parser("tag", parents=[common], help="set or remove a run's or an experiment's tags and note")
    tag.add_argument("target", metavar="RUN|exp:EXP", help="a run id (7), or exp:3 for experiment 3")
    tag.add_argument("tags", nargs="*", metavar="KEY=VALUE", help="tags to set; KEY= removes KEY")
    tag.add_argument("--note", help="replace the note ('' clears it)")

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    cancel.add_argument("run", type=int, metavar="RUN")

    checkpoint = commands.add_parser(
        "checkpoint", parents=[common], help="download a run's weights (safetensors), or list its checkpoints"
    )
    checkpoint.add_argument("run", type=int, metavar="RUN")
    checkpoint.add_argument("--step", type=int, help="a stored step (default: the latest)")
    checkpoint.add_argument("-o", "--output", type=Path, help="the file to write (default: list the checkpoints)")
    checkpoint.add_argument("--optimizer", action="store_true", help="the whole checkpoint, AdamW state included")

    proceed = commands.add_parser(
        "continue", parents=[common], help="train a succeeded run further: a new phase, from its final checkpoint"
    )
    proceed.add_argument("run", type=int, metavar="RUN")
    proceed.add_argument("--steps", type=int, required=True, help="steps of the new phase")
    proceed.add_argument("--weight-decay", type=float, help="the new phase's weight decay (default: the run's)")
    proceed.add_argument("--subset-size", type=int, help="train the new phase on a subset D' of the last training set")


def _add_experiment_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """usage, retry, delete, reproduce."""
    usage = commands.add_parser("usage", parents=[common], help="what your runs store and will store, against your bound")
    usage.add_argument("--json", action="store_true", help="the api's answer as JSON on stdout")

    retry = commands.add_parser("retry", parents=[common], help="re-queue an experiment's failed and cancelled runs")
    retry.add_argument("experiment", type=int, metavar="EXP")

    delete = commands.add_parser(
        "delete", parents=[common], help="cancel an experiment's runs, then delete it with its metrics and checkpoints"
    )
    delete.add_argument("experiment", type=int, metavar="EXP")

    reproduce = commands.add_parser(
        "reproduce", parents=[common],
        help="submit the paper's experiments, wait, and write one HTML report of every figure and claim",
    )  # fmt: skip
    reproduce.add_argument("--scale", help="ci (P=47, 2 cores in under 30 min), paper (GPU workers) or smoke; default ci")
    reproduce.add_argument("--seeds", type=int, help="seeds per experiment (default: each example's own)")
    reproduce.add_argument("--dir", type=Path, default=Path("groklab-report"), help="the report folder (default groklab-report)")
    reproduce.add_argument("--out", type=Path, help="the HTML file (default DIR/report.html)")
    reproduce.add_argument("--resume", type=Path, metavar="REPORT_DIR", help="re-attach to a report folder's experiments")


def run_client_command(args: argparse.Namespace) -> int:
    """Runs one client subcommand; a down server or a refused key is a message, not a traceback."""
    # soft_wrap: an error stays one line however narrow the terminal (scripts grep it).
    console = Console(stderr=True, soft_wrap=True)
    try:
        with Client(args.url, args.api_key) as client:
            return _COMMANDS[args.command](client, args, console)
    except ApiError as exc:
        console.print(f"groklab {args.command}: the api answered {exc.status}: {exc.detail}", markup=False)
        return 1
    except ClientError as exc:
        console.print(f"groklab {args.command}: {exc}", markup=False)
        return 1
    except (OSError, ValueError) as exc:
        console.print(f"groklab {args.command}: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        return 130


def _submit(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.dry_run:
        plan = client.plan(load_spec(args.spec))
        print(json.dumps(plan))
        console.print(f"{plan['kind']}: {plan['runs']} run(s), {plan['total_steps']:,} steps; nothing submitted")
        return 0
    experiment = client.submit(load_spec(args.spec))
    print(json.dumps({"id": experiment.id, "run_ids": experiment.run_ids}))
    console.print(f"experiment {experiment.id}: {len(experiment.run_ids)} run(s) queued")
    if args.watch:
        return _exit_code(watch_runs(client, experiment.run_ids))
    return 0


def _status(client: Client, args: argparse.Namespace, console: Console) -> int:
    out = Console()
    if args.experiment is None:
        table = Table("id", "name", "runs", "status")
        for experiment in client.experiments():
            table.add_row(str(experiment.id), experiment.name or "-", str(len(experiment.run_ids)), _counts(experiment))
        out.print(table)
        return 0
    experiment = client.experiment(args.experiment)
    labels = {row.id: row.label for row in ExperimentAnalysis.model_validate(client.analysis(experiment)).runs}
    table = Table(
        "run", "status", "step", "train_acc", "test_acc", "label", title=f"experiment {experiment.id}: {_counts(experiment)}"
    )
    for run in client.runs(experiment):
        table.add_row(
            str(run.id), run.status, f"{run.step}/{run.total_steps}", _fmt(run.latest_metrics.get("train_acc")),
            _fmt(run.latest_metrics.get("test_acc")), labels.get(run.id) or "-",
        )  # fmt: skip
    out.print(table)
    return 0


def _watch(client: Client, args: argparse.Namespace, console: Console) -> int:
    target = args.target.strip().lower()
    if target.startswith("exp:") and target[4:].isdigit():
        run_ids = client.experiment(int(target[4:])).run_ids
    elif target.removeprefix("run:").isdigit():
        run_ids = [int(target.removeprefix("run:"))]
    else:
        raise ValueError(f"watch takes a run id (7 or run:7) or an experiment (exp:3), not {args.target!r}")
    return _exit_code(watch_runs(client, run_ids))


def _metrics(client: Client, args: argparse.Namespace, console: Console) -> int:
    names = comma_list(args.names)
    if args.csv:
        for chunk in client.metrics_csv(args.run, names, max_points=args.max_points):
            sys.stdout.write(chunk)
        return 0
    rows = client.metrics(args.run, names, max_points=args.max_points)
    table = Table("name", "rows", "first step", "last step", "last value", title=f"run {args.run}")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    for name, series in sorted(by_name.items()):
        first, last = series[0], series[-1]
        table.add_row(
            name, str(len(series)), str(first.get("step", first.get("step_start"))),
            str(last.get("step", last.get("step_end"))), _fmt(last.get("value", last.get("last"))),
        )  # fmt: skip
    Console().print(table)
    return 0


def _runs(client: Client, args: argparse.Namespace, console: Console) -> int:
    where = dict(_assignment(item, "--where") for item in args.where)
    tags = {key: value or None for key, _, value in (item.partition("=") for item in args.tag)}
    runs = client.runs(
        args.experiment, where=where, label=comma_list(args.label), status=comma_list(args.status), tags=tags,
        sort=args.sort,
    )  # fmt: skip
    if args.json:
        for run in runs:
            print(json.dumps({"id": run.id, "experiment_id": run.experiment_id, "status": run.status,
                              "latest_metrics": run.latest_metrics, "tags": run.tags, "note": run.note,
                              "spec": run.spec}))  # fmt: skip
        return 0
    shown = list(where) or []
    table = Table("run", "exp", "status", "step", *shown, "train_acc", "test_acc", "tags", title=f"{len(runs)} run(s)")
    for run in runs:
        table.add_row(
            str(run.id), str(run.experiment_id), run.status, f"{run.step}/{run.total_steps}",
            *(str(flat_fields(run.spec, "").get(f".{path}", "-")) for path in shown),
            _fmt(run.latest_metrics.get("train_acc")), _fmt(run.latest_metrics.get("test_acc")),
            " ".join(f"{k}={v}" for k, v in sorted(run.tags.items())),
        )  # fmt: skip
    Console().print(table)
    return 0


def _assignment(item: str, flag: str) -> tuple[str, Any]:
    """'task.train_size=1000' -> ('task.train_size', 1000); a value that is not JSON stays text."""
    path, equals, text = item.partition("=")
    if not equals or not path:
        raise ValueError(f"{flag} takes PATH=VALUE, not {item!r}")
    try:
        return path, json.loads(text)
    except json.JSONDecodeError:
        return path, text


def _tag(client: Client, args: argparse.Namespace, console: Console) -> int:
    target = args.target.strip().lower()
    experiment = target.startswith("exp:")
    number = target.removeprefix("exp:").removeprefix("run:")
    if not number.isdigit():
        raise ValueError(f"tag takes a run id (7 or run:7) or an experiment (exp:3), not {args.target!r}")
    tags = {}
    for item in args.tags:
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"tags are KEY=VALUE (KEY= removes KEY), not {item!r}")
        tags[key] = value or None
    body = client.tag(int(number), tags or None, note=args.note, experiment=experiment)
    shown = " ".join(f"{k}={v}" for k, v in sorted(body["tags"].items())) or "no tags"
    console.print(
        f"{'experiment' if experiment else 'run'} {body['id']}: {shown}"
        + (f"; note: {body['note']}" if body.get("note") else ""),
        markup=False,
    )
    return 0


def _cancel(client: Client, args: argparse.Namespace, console: Console) -> int:
    run = client.cancel(args.run)
    console.print(f"run {run.id}: {run.status}" + (" (stopping)" if not run.finished else ""))
    return 0


def _checkpoint(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.output is None:
        table = Table("step", "bytes", "kept", "created")
        for info in client.checkpoints(args.run):
            table.add_row(str(info["step"]), f"{info['bytes']:,}", "yes" if info["kept"] else "", info["created_at"])
        Console().print(table)
        return 0
    data = client.download_checkpoint(args.run, args.step, optimizer=args.optimizer)
    args.output.write_bytes(data)
    console.print(f"run {args.run}: wrote {len(data):,} bytes to {args.output}", markup=False)
    return 0


def _continue(client: Client, args: argparse.Namespace, console: Console) -> int:
    run = client.continue_run(args.run, args.steps, weight_decay=args.weight_decay, subset_size=args.subset_size)
    console.print(f"run {run.id}: {run.status}, now {run.total_steps:,} steps (from step {run.step:,})", markup=False)
    return 0


def _retry(client: Client, args: argparse.Namespace, console: Console) -> int:
    before = {run.id: run.status for run in client.runs(args.experiment)}
    experiment = client.retry(args.experiment)
    retried = [run_id for run_id, status in before.items() if status in (FAILED, CANCELLED)]
    console.print(
        f"experiment {experiment.id}: re-queued run(s) {', '.join(map(str, retried))}; now {_counts(experiment)}", markup=False
    )
    return 0


def _delete(client: Client, args: argparse.Namespace, console: Console) -> int:
    experiment = client.experiment(args.experiment)
    client.delete_experiment(experiment)
    console.print(f"experiment {experiment.id} deleted, with its {len(experiment.run_ids)} run(s), metrics and checkpoints")
    return 0


def _usage(client: Client, args: argparse.Namespace, console: Console) -> int:
    from groklab.storage import human_bytes

    usage = client.usage()
    if args.json:
        print(json.dumps(usage))
        return 0
    table = Table(
        "",
        "stored",
        "planned",
        title=f"owner {usage['owner']}: {usage['runs']:,} run(s), {usage['unfinished_runs']:,} queued or running",
    )
    table.add_row("metric points", f"{usage['stored_points']:,}", f"{usage['planned_points']:,}")
    table.add_row("checkpoints", human_bytes(usage["stored_checkpoint_bytes"]), human_bytes(usage["planned_checkpoint_bytes"]))
    table.add_row("bytes in all", human_bytes(usage["stored_bytes"]), human_bytes(usage["planned_bytes"]))
    Console().print(table)
    used, bound = usage["stored_bytes"] + usage["planned_bytes"], usage["max_stored_bytes"]
    Console().print(f"{human_bytes(used)} of {human_bytes(bound)} ({100 * used / bound:.1f}%) stored and planned", markup=False)
    return 0


def _counts(experiment: Experiment) -> str:
    return ", ".join(f"{status} {n}" for status, n in sorted(experiment.status_counts.items()))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _reproduce(client: Client, args: argparse.Namespace, console: Console) -> int:
    from groklab.client.report import FAIL
    from groklab.client.reproduce import reproduce

    folder = args.resume or args.dir
    report, found = reproduce(
        client, scale=args.scale, seeds=args.seeds, folder=folder, out=args.out, resume=args.resume is not None
    )
    verdicts = [claim.verdict for claim in found]
    console.print(f"report: {report} ({verdicts.count('pass')} claims pass, {verdicts.count(FAIL)} fail, "
                  f"{verdicts.count('not testable')} not testable at this scale)", markup=False)  # fmt: skip
    return 0


def _exit_code(runs: list[Any]) -> int:
    """0 when every run succeeded, 1 otherwise, so that scripts can chain on `groklab watch`."""
    return 0 if all(run.status == SUCCEEDED for run in runs) else 1


_COMMANDS = {
    "submit": _submit, "status": _status, "watch": _watch, "metrics": _metrics, "cancel": _cancel, "delete": _delete,
    "checkpoint": _checkpoint, "continue": _continue, "retry": _retry, "reproduce": _reproduce, "usage": _usage,
    "runs": _runs, "tag": _tag,
}  # fmt: skip
COMMANDS = frozenset(_COMMANDS)
