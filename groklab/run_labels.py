"""A stored run's analysis (groklab/analysis.py) read from its series, and the labels of many runs,
which the metric query groups by and the runs listing filters and sorts by."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from groklab import analysis
from groklab.run_specs import run_spec
from groklab.store import metric_reads
from groklab.store.models import Run
from groklab.store.runs import SUCCEEDED


def analyse_stored_run(session: Session, run: Run, thresholds: analysis.Thresholds) -> dict[str, Any]:
    series = metric_reads.read_series(
        session, run.id, names=list(analysis.SERIES_NEEDED), start_step=None, end_step=None
    )
    return analysis.analyse_run(series, run_spec(run), thresholds)


def run_labels(
    session: Session, runs: Sequence[Run], thresholds: analysis.Thresholds | None = None
) -> dict[int, str | None]:
    """Each run's label with the default thresholds; None until it succeeded, as in an
    experiment's analysis (a running run's label would change under the reader)."""
    limits = thresholds or analysis.Thresholds()
    return {
        run.id: analyse_stored_run(session, run, limits)["label"] if run.status == SUCCEEDED else None
        for run in runs
    }
