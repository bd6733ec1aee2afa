"""d_crit_search on the server: plan a search's next round when its runs have finished.

Submission stores round 1 (and, on the ungrokking side, each seed's phase-1 run, with round 1's
probes waiting on them as forks). When a worker finishes a run of a search it calls
`advance_search`; the reconciler calls `advance_waiting_searches` on every pass, so a round whose
last run finished while no process planned the next (a worker killed in between, an api
restart) is planned then. Planning reads every finished probe's final test accuracy from the
database, narrows the bracket (engine/d_crit_bracket.py), stores the next round's runs (role `probe`,
`search_round`) and sends them; the database, not any process, holds the search's state.

A round with a failed or cancelled probe waits: the bracket would rest on missing sizes.
`POST /v1/experiments/{id}/retry` re-queues those runs, and the search goes on when they finish.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from sqlalchemy.orm import Session

from engine.experiments import DCritSearchExperiment, plan_search_probes
from engine.d_crit_bracket import ProbeResult, next_round
from groklab import analysis
from groklab.analysis import RunRecord
from groklab.analysis_models import DCritSearch
from groklab.dispatch import dispatch_runs
from groklab.run_specs import run_spec
from groklab.settings import Settings
from groklab.submission import stored_run
from groklab.store import runs as run_store
from groklab.store import search_state as search_store
from groklab.store.database import commit, session_scope
from groklab.store.models import Experiment, Run

log = logging.getLogger(__name__)


def probe_results(runs: list[Run]) -> list[ProbeResult]:
    """The finished probes' D (D' on the ungrokking side) and final test accuracy."""
    results = []
    for run in runs:
        if run.role != "probe" or run.status != run_store.SUCCEEDED:
            continue
        point = (run.latest_metrics or {}).get("test_acc")
        if point is None or point[1] is None:
            continue
        size = run_spec(run).final_train_size
        results.append(ProbeResult(train_size=size, round=run.search_round or 1, final_test_acc=float(point[1])))
    return results


def advance_search(session: Session, celery: Celery, settings: Settings, experiment_id: int) -> list[int]:
    """Plan and send the search's next round if its runs have all finished; the new run ids.

    Commits. A no-op for another kind of experiment, a search that ended, or a round still running.
    """
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or experiment.kind != search_store.SEARCH_KIND or experiment.search_ended_at is not None:
        return []
    search_store.lock_search(session, experiment_id)
    # Read again under the lock: another worker may have finished a run (or planned the round).
    session.expire_all()
    runs = list(experiment.runs)
    if experiment.search_ended_at is not None or any(r.status not in run_store.FINISHED_STATUSES for r in runs):
        return []
    probes = [r for r in runs if r.role == "probe"]
    if any(r.status != run_store.SUCCEEDED for r in probes):
        return []  # waits for a retry of its failed or cancelled probes
    request = DCritSearchExperiment.model_validate(experiment.spec)
    phase1 = sorted((r for r in runs if r.role == "phase1"), key=lambda r: r.index)
    if any(r.status != run_store.SUCCEEDED for r in phase1):
        return []
    plan = next_round(
        request.low,
        request.high,
        probe_results(runs),
        level=request.level,
        relative_tolerance=request.relative_tolerance,
        probes_per_round=request.probes_per_round,
        runs_per_size=len(request.seeds),
        runs_so_far=len(runs),
        max_runs=request.max_runs,
    )
    if plan.ended is not None:
        search_store.mark_ended(session, experiment_id)
        commit(session)
        log.info("d_crit_search %s ended (%s) with bracket %s", experiment_id, plan.ended, plan.bracket)
        return []
    search_round = max((r.search_round or 1 for r in probes), default=0) + 1
    planned = plan_search_probes(request, plan.sizes, search_round, [run_spec(r) for r in phase1])
    if phase1:
        # Probes go size by size, seed by seed within a size, like phase 1's runs.
        planned = [run.model_copy(update={"parent_run_id": phase1[i % len(phase1)].id}) for i, run in enumerate(planned)]
    new_runs = run_store.add_runs(session, experiment, [stored_run(run) for run in planned])
    run_ids = [run.id for run in new_runs]
    dispatch_runs(session, celery, run_ids, ensemble_size=settings.ensemble_size)
    log.info("d_crit_search %s: round %s probes %s in bracket %s", experiment_id, search_round, plan.sizes, plan.bracket)
    return run_ids


def analysis_section(
    experiment: Experiment, records: Sequence[RunRecord], thresholds: analysis.Thresholds
) -> dict[str, DCritSearch]:
    """The experiment analysis' `search` section: the bracket, the estimate and the probes."""
    request = DCritSearchExperiment.model_validate(experiment.spec)
    return {"search": analysis.search(request, records, ended=experiment.search_ended_at is not None)}


def advance_waiting_searches(settings: Settings, celery: Celery) -> list[int]:
    """The reconciler's pass over searches between rounds; the run ids it sent."""
    sent: list[int] = []
    with session_scope(settings.resolved_database_url) as session:
        waiting = search_store.searches_between_rounds(session)
    for experiment_id in waiting:
        with session_scope(settings.resolved_database_url) as session:
            sent += advance_search(session, celery, settings, experiment_id)
    return sent
