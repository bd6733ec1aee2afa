"""Command line: `python -m engine run SPEC.json --out DIR [--device cpu]` trains locally.

SPEC is what the server takes: one run, a sweep, or one of the paper's kinds (examples/). Every
metric point goes to DIR/metrics.csv (columns run, name, step, value; `run` is the run's index
in the plan). A one-run spec keeps its checkpoint in DIR, others in DIR/run-<index>; a forked run
starts from its parent's final checkpoint. A DIR that already holds a checkpoint resumes it
(metrics.csv then holds the points from the resumed step on). An invalid spec exits with code 2
and names the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from tqdm import tqdm

from engine.experiments import ExperimentRequest, PlannedRun, plan_experiment
from engine.result import EngineError
from engine.sink import CsvSink
from engine.spec import SpecError, error_field


class ProgressBarSink:
    """A CsvSink that also advances a tqdm bar."""

    def __init__(self, csv: CsvSink, total_steps: int, label: str):
        self.csv = csv
        self.bar = tqdm(total=total_steps, unit="step", desc=label)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.csv.log(step, metrics)
        if "test_acc" in metrics:
            self.bar.set_postfix(train_acc=metrics["train_acc"], test_acc=metrics["test_acc"], refresh=False)

    def progress(self, step: int, total_steps: int) -> None:
        self.bar.update(step - self.bar.n)

    def flush(self) -> None:
        self.csv.flush()

    def close(self) -> None:
        self.bar.close()


def _load_plan(path: Path) -> list[PlannedRun]:
    try:
        request = TypeAdapter(ExperimentRequest).validate_json(path.read_text())
        return plan_experiment(request, max_runs=10_000)
    except OSError as exc:
        sys.exit(f"error: cannot read spec {path}: {exc.strerror}")
    except SpecError as exc:
        print(f"error: invalid spec {path}:\n  {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        # A request without 'kind' is the sweep: its errors are located under the union tag 'sweep'.
        fields = [error_field(err, ignore=("sweep",)) for err in exc.errors()]
        lines = [f"  {field or '(spec)'}: {message}" for field, message in fields]
        print(f"error: invalid spec {path}:\n" + "\n".join(lines), file=sys.stderr)
        sys.exit(2)


def _run_dir(out: Path, plan: list[PlannedRun], index: int) -> Path:
    return out if len(plan) == 1 else out / f"run-{index}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the runs of a spec file (one run, a sweep or a kind)")
    run.add_argument("spec", type=Path)
    run.add_argument("--out", type=Path, required=True, help="directory for metrics.csv and checkpoint.pt")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the spec's device")
    run.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 float32 matmuls on CUDA (default on, as on a worker; no effect on the CPU)",
    )
    args = parser.parse_args(argv)

    plan = _load_plan(args.spec)
    # After validation: a bad spec fails fast, without loading torch.
    from engine.checkpoint import CheckpointFolder, start_from_parent
    from engine.device import configure_tf32
    from engine.train import train_run

    configure_tf32(args.tf32)

    args.out.mkdir(parents=True, exist_ok=True)
    csv = CsvSink(args.out / "metrics.csv")
    try:
        for index, planned in enumerate(plan):
            run_dir = _run_dir(args.out, plan, index)
            run_dir.mkdir(parents=True, exist_ok=True)
            if planned.parent_index is not None:
                # The parent's points are already in metrics.csv, under the parent's index.
                start_from_parent(CheckpointFolder(_run_dir(args.out, plan, planned.parent_index)), CheckpointFolder(run_dir))
            csv.run = str(index)
            sink = ProgressBarSink(csv, planned.spec.total_steps, f"run {index} ({planned.role})")
            try:
                result = train_run(planned.spec, sink, checkpoint=run_dir, device=args.device)
            finally:
                sink.close()
            summary = ", ".join(
                f"{k} {result.final_metrics[k]:.4g}" for k in ("train_acc", "test_acc") if k in result.final_metrics
            )
            print(f"run {index} done: {result.final_step} steps; {summary}")
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        csv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
