"""benchmarks.precision end to end at a micro scale (P=11, 30 steps): both precisions train in
their own processes and each seed gets its row. Its figures are benchmarks/precision.py's business."""

from __future__ import annotations

import pytest

from benchmarks import precision


def test_each_precision_and_seed_has_a_row(capsys: pytest.CaptureFixture[str]) -> None:
    precision.main(["--p", "11", "--steps", "30", "--seeds", "2", "--train-fraction", "0.5"])
    out = capsys.readouterr().out
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [[f"| {p}", str(seed)] for p in precision.PRECISIONS for seed in range(2)]
    for p in precision.PRECISIONS:
        assert f"{p}: " in out and " ms per run-step" in out
