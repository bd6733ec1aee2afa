"""benchmarks.methods end to end at a micro scale (P=7, 6 steps): the kind's plan, ensembles,
the analysis and the table, in seconds. Its figures are benchmarks/methods.py's business."""

from __future__ import annotations

import pytest

from benchmarks import methods


def test_the_table_has_a_row_per_method_and_trains_the_baseline_once(capsys: pytest.CaptureFixture[str]) -> None:
    methods.main(["--micro"])
    out = capsys.readouterr().out
    table = out[out.index(methods.TABLE_HEAD) :].splitlines()
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == methods.DEFAULT_METHODS
    # The first method trains both sides (2 lr x 2 wd x 2 seeds each); the rest reuse the
    # baseline's 8 runs, whose specs the kind plans identically for every method.
    trained = [line for line in out.splitlines() if ": trained " in line]
    assert " trained 16 of its 16 runs " in trained[0]
    assert all(" trained 8 of its 16 runs " in line for line in trained[1:])
