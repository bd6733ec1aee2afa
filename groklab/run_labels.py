"""A stored run's analysis (groklab/analysis.py) read from its series, and the labels of many runs,
which the metric query groups by and the runs listing filters and sorts by.

A finished run's analysis is computed once per thresholds and kept in the answer cache
(groklab/store/answer_cache.py): an experiment page of 200 runs read their 800,000 points at
every open (2.5-5 s), and now reads 200 cached analyses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from sqlalchemy.orm import Session

from engine import spec as engine_spec
from groklab import analysis
from groklab.analysis_models import RunAnalysis
from groklab.run_specs import run_spec
from groklab.store import answer_cache, metric_reads
from groklab.store.models import Run
from groklab.store.runs import FINISHED_STATUSES, SUCCEEDED

_CODE = answer_cache.code_digest(analysis, engine_spec, metric_reads, sys.modules[__name__])


def analyse_stored_run(session: Session, run: Run, thresholds: analysis.Thresholds) -> RunAnalysis:
    series = metric_reads.read_series(session, run.id, names=list(analysis.SERIES_NEEDED), start_step=None, end_step=None)
    return analysis.analyse_run(series, run_spec(run), thresholds)


def analyse_stored_runs(
    session: Session, runs: Sequence[Run], thresholds: analysis.Thresholds, *, cache_bytes: int
) -> dict[int, RunAnalysis]:
    """Each run's analysis by run id: a finished run's from the cache when it is there (computed
    and kept when not), a running one's computed from its series so far."""
    limits = thresholds.model_dump()
    keys = {
        run.id: answer_cache.answer_key("run_analysis", _CODE, answer_cache.run_fingerprint(run), limits)
        for run in runs
        if run.status in FINISHED_STATUSES and cache_bytes > 0
    }
    found = {run_id: RunAnalysis.model_validate(kept) for run_id, kept in answer_cache.cached_json(session, keys).items()}
    computed = {run.id: analyse_stored_run(session, run, thresholds) for run in runs if run.id not in found}
    new = [
        answer_cache.Entry(keys[run.id], run.experiment_id, run.id, json.dumps(computed[run.id].model_dump(mode="json")).encode())
        for run in runs
        if run.id in keys and run.id in computed
    ]
    if new:
        answer_cache.put_many(session, new, max_bytes=cache_bytes)
    return found | computed


def run_labels(
    session: Session, runs: Sequence[Run], *, cache_bytes: int, thresholds: analysis.Thresholds | None = None
) -> dict[int, str | None]:
    """Each run's label with the default thresholds; None until it succeeded, as in an
    experiment's analysis (a running run's label would change under the reader)."""
    succeeded = [run for run in runs if run.status == SUCCEEDED]
    analyses = analyse_stored_runs(session, succeeded, thresholds or analysis.Thresholds(), cache_bytes=cache_bytes)
    return {run.id: analyses[run.id].label if run.id in analyses else None for run in runs}
