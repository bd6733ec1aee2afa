"""`python -m engine run` trains a spec file into metrics.csv and a checkpoint, and rejects bad specs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# one thread: on a shared 2-core CI box, two spinning OpenMP threads slow a busy machine ~4x
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV
    )


def _train(tmp_path: Path, spec: dict) -> tuple[Path, list[dict[str, str]]]:
    """Runs the CLI on `spec` into tmp_path/out; returns that folder and the rows of metrics.csv."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = _run_cli(str(spec_path), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    with (out / "metrics.csv").open() as f:
        return out, list(csv.DictReader(f))


def test_cli_writes_metrics_csv_and_checkpoint(tmp_path):
    spec = {"task": {"p": 23, "train_fraction": 0.5}, "phases": [{"steps": 200}], "eval_every": 50}
    out, rows = _train(tmp_path, spec)
    assert set(rows[0]) == {"run", "name", "step", "value"}
    test_acc_steps = [int(r["step"]) for r in rows if r["name"] == "test_acc"]
    assert test_acc_steps == [0, 50, 100, 150, 200]
    final_train_acc = [float(r["value"]) for r in rows if r["name"] == "train_acc"][-1]
    assert final_train_acc == 1.0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 200


def test_cli_rejects_invalid_spec_naming_the_field(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"task": {"op": "divide", "p": 24}}))

    proc = _run_cli(str(spec_path), "--out", str(tmp_path / "out"))

    assert proc.returncode == 2
    assert "p=24 is not prime" in proc.stderr
    assert "task" in proc.stderr


def test_cli_rejects_unknown_field(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"optimizer": {"learning_rate": 0.1}}))

    proc = _run_cli(str(spec_path), "--out", str(tmp_path / "out"))

    assert proc.returncode == 2
    assert "optimizer.learning_rate" in proc.stderr


def test_cli_trains_a_sweep_and_a_fork_like_the_server(tmp_path):
    spec = {
        "kind": "ungrokking",
        "base": {"task": {"p": 13, "train_fraction": 0.5}, "phases": [{"steps": 30}], "eval_every": 10},
        "subset_sizes": [20, 40],
        "phase2_steps": 20,
        "seeds": [0],
    }
    out, rows = _train(tmp_path, spec)
    steps = {run: sorted(int(r["step"]) for r in rows if r["run"] == run and r["name"] == "test_acc") for run in "012"}
    assert steps["0"] == [0, 10, 20, 30]
    # The forks start from run 0's final checkpoint: they log their own phase, from its boundary.
    assert steps["1"] == steps["2"] == [30, 40, 50]
    for run in "012":
        assert (out / f"run-{run}" / "checkpoint.pt").exists()
    assert torch.load(out / "run-2" / "checkpoint.pt", weights_only=True)["step"] == 50


def test_cli_rejects_a_bad_kind_naming_the_field(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"kind": "ungrokking", "base": {"task": {"p": 13}}, "subset_sizes": [500]}))

    proc = _run_cli(str(spec_path), "--out", str(tmp_path / "out"))

    assert proc.returncode == 2
    assert "subset_sizes" in proc.stderr


def test_cli_turns_tf32_on_unless_told_not_to(tmp_path):
    """As a worker does by default (GROKLAB_TF32); in-process, to read the process-wide flags after."""
    from engine.__main__ import main
    from engine.device import configure_tf32

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"task": {"p": 7, "train_fraction": 0.5}, "phases": [{"steps": 2}]}))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_tf32(False)
        assert main(["run", str(spec_path), "--out", str(tmp_path / "on"), "--device", "cpu"]) == 0
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert main(["run", str(spec_path), "--out", str(tmp_path / "off"), "--device", "cpu", "--no-tf32"]) == 0
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
