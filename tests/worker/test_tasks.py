"""The training task's bookkeeping, without a worker process: fencing, buffered retries, fork hand-off
(and the packs fork children go out in, on the filesystem broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from celery import Celery

from engine.experiments import UngrokkingExperiment
from groklab.dispatch import waiting_packs
from groklab.reconciler import reconcile_once
from groklab.settings import Settings
from groklab.submission import submit_experiment
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from groklab.store.metric_reads import read_series
from groklab.store.migrate import upgrade
from tests.store.test_leases import parent_and_child
from worker import tasks
from worker.sink import DatabaseMetricSink
from worker.celery_config import make_celery


class RecordingBroker:
    conf: ClassVar[dict[str, str]] = {"task_default_queue": "groklab"}

    def __init__(self) -> None:
        self.messages: list[list[int]] = []

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        self.messages.append(args[0])


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> RecordingBroker:
    recording = RecordingBroker()
    monkeypatch.setattr(tasks, "app", recording)
    return recording


def _claimed(settings: Settings, run_id: int, lease_seconds: float = 60) -> tasks.ClaimedRun:
    settings = settings.model_copy(update={"lease_seconds": lease_seconds})
    [member] = tasks._claim(settings, CheckpointStore.from_settings(settings), [run_id], "test-worker")
    return member


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=url, data_dir=tmp_path)


def _status(url: str, run_id: int) -> run_store.Run:
    with session_scope(url) as session:
        return run_store.get_run(session, run_id)


def test_a_succeeded_parent_sends_its_waiting_child(empty_database_url: str, tmp_path: Path, broker: RecordingBroker) -> None:
    parent, child = parent_and_child(empty_database_url)
    settings = _settings(empty_database_url, tmp_path)
    member = _claimed(settings, parent)
    assert (
        tasks._claim(settings, CheckpointStore.from_settings(settings), [parent], "another-worker") == []
    )  # a duplicate delivery trains nothing
    assert tasks._finish(settings, [tasks.Ending(member, run_store.SUCCEEDED)]) == {parent: run_store.SUCCEEDED}
    assert broker.messages == [[child]]
    run = _status(empty_database_url, child)
    assert run.status == run_store.QUEUED and run.enqueued_at is not None


def test_a_failed_parent_fails_its_child_and_sends_nothing(
    empty_database_url: str, tmp_path: Path, broker: RecordingBroker
) -> None:
    parent, child = parent_and_child(empty_database_url)
    settings = _settings(empty_database_url, tmp_path)
    member = _claimed(settings, parent)
    assert tasks._finish(settings, [tasks.Ending(member, run_store.FAILED, error="boom")]) == {parent: run_store.FAILED}
    assert broker.messages == []
    run = _status(empty_database_url, child)
    assert run.status == run_store.FAILED and f"parent run {parent} failed" in (run.error or "")


def test_a_fenced_off_worker_finishes_nothing_and_writes_no_points(
    empty_database_url: str, tmp_path: Path, broker: RecordingBroker
) -> None:
    url = empty_database_url
    parent, child = parent_and_child(url)
    settings = _settings(url, tmp_path)
    member = _claimed(settings, parent, lease_seconds=-1)
    with session_scope(url) as session:
        assert leases.expire_leases(session) == [parent]
    member.sink.log(0, {"train_loss": 1.0})
    member.sink.flush()
    assert member.sink.lease_lost and member.sink.points_written == 0
    assert tasks._finish(settings, [tasks.Ending(member, run_store.SUCCEEDED)]) == {parent: "lease-lost"}
    assert broker.messages == []
    assert _status(url, parent).status == run_store.QUEUED
    assert _status(url, child).status == run_store.QUEUED
    with session_scope(url) as session:
        assert read_series(session, parent, names=None, start_step=None, end_step=None) == {}


def test_points_stay_buffered_through_a_database_outage_and_are_written_after(empty_database_url: str, tmp_path: Path) -> None:
    url = empty_database_url
    parent, _ = parent_and_child(url)
    with session_scope(url) as session:
        lease = leases.claim_run(session, parent, worker="w", lease_seconds=60)
    assert lease is not None
    down = f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}"  # a folder that does not exist
    sink = DatabaseMetricSink(down, lease, lease_seconds=60, flush_seconds=1, flush_points=2)
    sink.log(0, {"train_loss": 1.0, "test_acc": 0.5})  # reaches flush_points: a write is tried
    assert sink.points_written == 0 and not sink.lease_lost
    sink.database_url = url
    sink.flush()
    assert sink.points_written == 2
    with session_scope(url) as session:
        series = read_series(session, parent, names=None, start_step=None, end_step=None)
    assert series == {"test_acc": [[0, 0.5]], "train_loss": [[0, 1.0]]}


def _fig7(url: str, celery: Celery, settings: Settings, seeds: int, sizes: int) -> tuple[list[int], list[int]]:
    """The paper's Fig. 7 shape at P=23 submitted as the api does: phase-1 run ids, child run ids."""
    request = UngrokkingExperiment.model_validate(
        {
            "kind": "ungrokking",
            "base": {"task": {"p": 23, "train_fraction": 0.5}},  # D = 264
            "seeds": list(range(seeds)),
            "subset_sizes": list(range(10, 10 * sizes + 1, 10)),
            "phase2_steps": 10,
        }
    )
    with session_scope(url) as session:
        experiment = submit_experiment(session, celery, settings, request, owner="fig7", idempotency_key=None).experiment
        parents = [run.id for run in experiment.runs if run.parent_run_id is None]
        children = [run.id for run in experiment.runs if run.parent_run_id is not None]
    return parents, children


def _phase_one_succeeds(settings: Settings, parents: list[int]) -> dict[int, str]:
    """What the worker does with phase 1's message once its ensemble trained: claim, record the ends."""
    members = tasks._claim(settings, CheckpointStore.from_settings(settings), parents, "test-worker", "phase-1")
    assert [m.run_id for m in members] == parents
    return tasks._finish(settings, [tasks.Ending(member, run_store.SUCCEEDED) for member in members])


def test_children_of_parents_that_finish_together_go_out_in_full_packs(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fig. 7: 10 seeds x 21 D', ensemble size 64. The 10 phase-1 runs are one message and one
    ensemble; their 210 children go out as 4 messages (64, 64, 64, 18), not 10 of 21."""
    upgrade(empty_database_url)
    settings = Settings(database_url=empty_database_url, data_dir=tmp_path, ensemble_size=64)
    celery = make_celery(settings)  # the filesystem broker in tmp_path
    monkeypatch.setattr(tasks, "app", celery)  # the worker's app, on this test's broker
    parents, children = _fig7(empty_database_url, celery, settings, seeds=10, sizes=21)
    assert waiting_packs(celery, settings.queue_name) == [parents]

    assert _phase_one_succeeds(settings, parents) == dict.fromkeys(parents, run_store.SUCCEEDED)
    packs = [pack for pack in waiting_packs(celery, settings.queue_name) or [] if pack != parents]
    assert sorted(len(pack) for pack in packs) == [18, 64, 64, 64]
    assert sorted(run_id for pack in packs for run_id in pack) == children  # each child once
    # Marked sent with their parents' success: the reconciler does not send them again.
    assert reconcile_once(settings, celery).resent == []


def test_children_whose_messages_never_left_are_sent_by_the_reconciler_in_full_packs(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parents' success is stored but their children's messages never reach the broker (it is
    down, or the worker died right after the commit): the children stay queued, and the
    reconciler sends them once their grace period is over, still packed across parents."""
    upgrade(empty_database_url)
    settings = Settings(database_url=empty_database_url, data_dir=tmp_path, ensemble_size=8, requeue_grace_seconds=0)
    celery = make_celery(settings)
    monkeypatch.setattr(tasks, "app", celery)
    parents, children = _fig7(empty_database_url, celery, settings, seeds=3, sizes=5)
    queue = tmp_path / "broker" / "queue"
    for message in queue.iterdir():  # a worker took phase 1's message
        message.unlink()
    queue.rmdir()  # and now the broker cannot take a message

    assert _phase_one_succeeds(settings, parents) == dict.fromkeys(parents, run_store.SUCCEEDED)
    for child in children:
        run = _status(empty_database_url, child)
        assert run.status == run_store.QUEUED and run.enqueued_at is not None

    queue.mkdir()
    report = reconcile_once(settings, celery)
    assert report.resent == children
    packs = waiting_packs(celery, settings.queue_name) or []
    assert sorted(len(pack) for pack in packs) == [7, 8]
    assert sorted(run_id for pack in packs for run_id in pack) == children
