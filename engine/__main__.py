"""Command line: `python -m engine run SPEC.json --out DIR [--device cpu]` trains one run locally.

Writes every metric point to DIR/metrics.csv (columns run, name, step, value) and the checkpoint
to DIR/checkpoint.pt; a DIR that already holds a checkpoint resumes it (metrics.csv then holds the
points from the resumed step on). An invalid spec exits with code 2 and names the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from engine.result import EngineError
from engine.sink import CsvSink
from engine.spec import RunSpec


class ProgressBarSink:
    """A CsvSink that also advances a tqdm bar."""

    def __init__(self, csv: CsvSink, total_steps: int):
        self.csv = csv
        self.bar = tqdm(total=total_steps, unit="step")

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
        self.csv.close()


def _load_spec(path: Path) -> RunSpec:
    try:
        return RunSpec.model_validate_json(path.read_text())
    except OSError as exc:
        sys.exit(f"error: cannot read spec {path}: {exc.strerror}")
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"])
            lines.append(f"  {loc or '(spec)'}: {err['msg'].removeprefix('Value error, ')}")
        print(f"error: invalid spec {path}:\n" + "\n".join(lines), file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train one run from a RunSpec JSON file")
    run.add_argument("spec", type=Path)
    run.add_argument("--out", type=Path, required=True, help="directory for metrics.csv and checkpoint.pt")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the spec's device")
    args = parser.parse_args(argv)

    spec = _load_spec(args.spec)
    from engine.train import train_run  # after validation: a bad spec fails fast, without torch

    args.out.mkdir(parents=True, exist_ok=True)
    sink = ProgressBarSink(CsvSink(args.out / "metrics.csv"), spec.total_steps)
    try:
        result = train_run(spec, sink, checkpoint_dir=args.out, device=args.device)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sink.close()
    summary = ", ".join(f"{k} {result.final_metrics[k]:.4g}" for k in ("train_acc", "test_acc") if k in result.final_metrics)
    print(f"done: {result.final_step} steps; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
