"""The broker is transport, the database the truth: every path that sends runs (submit, fork
hand-off, continue, retry, a search's next round) keeps them queued when the broker cannot be
reached, without failing the request, and the reconciler sends them once it answers. The broker
that is down is a real Redis URL with nothing listening; the one that is back is the filesystem
broker, read by the same function the reconciler uses."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter

from engine.experiments import ExperimentRequest
from groklab.continuation import ContinueRequest, continue_run, retry_experiment
from groklab.dispatch import pending_run_ids
from groklab.forks import hand_off
from tests.local_servers import free_port
from groklab.reconciler import reconcile_once
from groklab.search_rounds import advance_search
from groklab.settings import Settings
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from groklab.store.models import Run
from groklab.submission import submit_experiment
from tests.services import tiny_spec
from worker.celery_config import make_celery

REQUEST = TypeAdapter(ExperimentRequest)


def _finish(url: str, run_ids: list[int], status: str, test_acc: float | None = None) -> None:
    with session_scope(url) as session:
        for run_id in run_ids:
            assert run_store.transition(session, run_id, from_statuses=[run_store.QUEUED], to_status=status, message="test")
            if test_acc is not None:
                session.get(Run, run_id).latest_metrics = {"test_acc": [10, test_acc]}


def _queued_unsent(url: str, run_ids: list[int]) -> None:
    with session_scope(url) as session:
        for run_id in run_ids:
            run = session.get(Run, run_id)
            assert run.status == run_store.QUEUED and run.enqueued_at is not None, (run_id, run.status)


def test_every_path_that_sends_keeps_its_runs_queued_while_the_broker_is_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'groklab.db'}"
    upgrade(url)
    settings = Settings(database_url=url, data_dir=tmp_path, requeue_grace_seconds=0)
    down = make_celery(settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}))
    sent: list[int] = []

    def submit(spec: dict) -> list[Run]:
        with session_scope(url) as session:
            experiment = submit_experiment(
                session, down, settings, REQUEST.validate_python(spec), owner="local", idempotency_key=None
            ).experiment
            runs = list(experiment.runs)
            session.expunge_all()
        return runs

    sweep = submit(tiny_spec(seeds=[0, 1, 2]))  # submit
    sent += [run.id for run in sweep]
    ungrokking = submit({"kind": "ungrokking", "base": tiny_spec(), "subset_sizes": [20, 40], "phase2_steps": 10})
    parent = next(run.id for run in ungrokking if run.parent_run_id is None)
    children = [run.id for run in ungrokking if run.parent_run_id == parent]
    _queued_unsent(url, [*sent, parent])

    _finish(url, [parent], run_store.RUNNING)  # fork hand-off
    with session_scope(url) as session:
        run_store.transition(session, parent, from_statuses=[run_store.RUNNING], to_status=run_store.SUCCEEDED)
        hand_off(session, down, settings, {parent: run_store.SUCCEEDED})
    sent += children
    _finish(url, [sweep[0].id], run_store.SUCCEEDED)  # continue
    with session_scope(url) as session:
        continue_run(session, down, settings, sweep[0].id, ContinueRequest(steps=10), owner="local")
    _finish(url, [sweep[1].id], run_store.FAILED)  # retry
    with session_scope(url) as session:
        retry_experiment(session, down, settings, session.get(Run, sweep[1].id).experiment)
    search = submit({"kind": "d_crit_search", "side": "scratch", "low": 20, "high": 80, "seeds": [0],
                     "probes_per_round": 1, "relative_tolerance": 0.05, "base": tiny_spec()})  # fmt: skip
    _finish(url, [run.id for run in search], run_store.SUCCEEDED, test_acc=1.0)
    with session_scope(url) as session:
        next_round = advance_search(session, down, settings, search[0].experiment_id)  # a search's next round
    assert next_round
    sent += next_round
    _queued_unsent(url, sent)

    # The broker answers again: one reconciler pass sends every one of them.
    up = make_celery(settings)
    report = reconcile_once(settings, up)
    assert set(sent) <= set(report.resent)
    assert set(sent) <= pending_run_ids(up, settings.queue_name)
