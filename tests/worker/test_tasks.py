"""The training task's bookkeeping, without a worker process: fencing, buffered retries, fork hand-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from groklab.settings import Settings
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.checkpoints import CheckpointStore
from groklab.store.database import session_scope
from groklab.store.metric_reads import read_series
from tests.store.test_leases import parent_and_child
from worker import tasks
from worker.sink import DatabaseMetricSink


class RecordingBroker:
    def __init__(self) -> None:
        self.messages: list[list[int]] = []

    def send_task(self, name: str, args: list[Any]) -> None:
        self.messages.append(args[0])


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> RecordingBroker:
    recording = RecordingBroker()
    monkeypatch.setattr(tasks, "app", recording)
    return recording


def _claimed(settings: Settings, run_id: int, lease_seconds: float = 60) -> tasks.Member:
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
    assert tasks._claim(settings, CheckpointStore.from_settings(settings), [parent], "another-worker") == []  # a duplicate delivery trains nothing
    assert tasks._finish(settings, member, run_store.SUCCEEDED) == run_store.SUCCEEDED
    assert broker.messages == [[child]]
    run = _status(empty_database_url, child)
    assert run.status == run_store.QUEUED and run.enqueued_at is not None


def test_a_failed_parent_fails_its_child_and_sends_nothing(empty_database_url: str, tmp_path: Path, broker: RecordingBroker) -> None:
    parent, child = parent_and_child(empty_database_url)
    settings = _settings(empty_database_url, tmp_path)
    member = _claimed(settings, parent)
    assert tasks._finish(settings, member, run_store.FAILED, error="boom") == run_store.FAILED
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
    assert tasks._finish(settings, member, run_store.SUCCEEDED) == "lease-lost"
    assert broker.messages == []
    assert _status(url, parent).status == run_store.QUEUED
    assert _status(url, child).status == run_store.QUEUED
    with session_scope(url) as session:
        assert read_series(session, parent, names=None, start_step=None, end_step=None) == {}


def test_points_stay_buffered_through_a_database_outage_and_are_written_after(
    empty_database_url: str, tmp_path: Path
) -> None:
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
