"""The checkpoint store on every backend: the database (PostgreSQL, SQLite), a folder, and S3 on a real SeaweedFS."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from groklab.settings import Settings
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import (
    BlobMissing,
    BlobStore,
    CheckpointCorrupt,
    CheckpointFenced,
    CheckpointNotFound,
    CheckpointStore,
)
from groklab.store.database import session_scope
from groklab.store.leases import Lease, LeaseLost, claim_run, expire_leases
from groklab.store.migrate import upgrade
from groklab.store.models import utcnow
from tests.local_seaweedfs import SeaweedFS


class RecordingBlobs:
    """A backend's blob store that remembers the keys written, to look for leftovers."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def put_blob(self, key: str, data: bytes) -> None:
        self.keys.append(key)
        self.inner.put_blob(key, data)

    def get_blob(self, key: str) -> bytes:
        return self.inner.get_blob(key)

    def delete_blob(self, key: str) -> None:
        self.inner.delete_blob(key)

    def is_transient(self, exc: BaseException) -> bool:
        return self.inner.is_transient(exc)

    def list_blobs(self, older_than: datetime) -> Iterator[str]:
        return self.inner.list_blobs(older_than)


@pytest.fixture(params=["sqlite", "postgresql", "file", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of one backend; file keeps its index in SQLite, S3 in PostgreSQL (the multi-host set-up)."""
    backend = request.param
    database_url = request.getfixturevalue("fresh_pg_url" if backend in ("postgresql", "s3") else "sqlite_url")
    upgrade(database_url)
    if backend == "file":
        return Settings(database_url=database_url, checkpoint_url=(tmp_path / "checkpoints").as_uri())
    if backend == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        return Settings(database_url=database_url, **server.store_settings())
    return Settings(database_url=database_url)


@pytest.fixture
def store(settings: Settings) -> CheckpointStore:
    plain = CheckpointStore.from_settings(settings)
    return CheckpointStore(settings.resolved_database_url, RecordingBlobs(plain.blobs), lease_seconds=60)


def running_run(database_url: str) -> Lease:
    with session_scope(database_url) as session:
        run_id = (
            run_store.create_experiment(session, name="t", spec={}, runs=[run_store.NewRun(spec={}, total_steps=100)]).runs[0].id
        )
    return reclaim(database_url, run_id)


def reclaim(database_url: str, run_id: int) -> Lease:
    """The run's lease expires (its worker is gone) and another worker claims it."""
    with session_scope(database_url) as session:
        expire_leases(session, now=utcnow() + timedelta(days=1))
    with session_scope(database_url) as session:
        lease = claim_run(session, run_id, worker=f"w-{uuid.uuid4().hex[:6]}", lease_seconds=60)
    assert lease is not None
    return lease


def test_a_checkpoint_round_trips_with_its_size_and_sha256(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    data = bytes(range(256)) * 40_000  # 10 MB: several database chunks
    written = store.put(lease, 100, data)
    info, read = store.get(lease.run_id, 100)
    assert read == data
    assert info == written
    assert (info.step, info.size_bytes, info.sha256, info.fencing_token) == (
        100, len(data), hashlib.sha256(data).hexdigest(), lease.token,
    )  # fmt: skip


def test_an_empty_checkpoint_round_trips(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    store.put(lease, 0, b"")
    assert store.get(lease.run_id, 0)[1] == b""


def test_get_without_a_step_reads_the_latest_and_list_is_in_step_order(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    for step in (200, 50, 100):
        store.put(lease, step, f"at {step}".encode())
    info, data = store.get(lease.run_id)
    assert (info.step, data) == (200, b"at 200")
    assert [info.step for info in store.list_checkpoints(lease.run_id)] == [50, 100, 200]


def test_delete_removes_the_checkpoint_and_its_blob(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    store.put(lease, 10, b"ten")
    info = store.put(lease, 20, b"twenty")
    store.delete(lease.run_id, 20)
    assert [i.step for i in store.list_checkpoints(lease.run_id)] == [10]
    assert store.get(lease.run_id)[1] == b"ten"
    with pytest.raises(BlobMissing):
        store.blobs.get_blob(info.blob_key)


def test_delete_run_removes_every_checkpoint_and_blob(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    infos = [store.put(lease, step, b"x" * step) for step in (1, 2, 3)]
    assert store.delete_run(lease.run_id) == 3
    assert store.list_checkpoints(lease.run_id) == []
    for info in infos:
        with pytest.raises(BlobMissing):
            store.blobs.get_blob(info.blob_key)


def test_prune_keeps_the_latest_and_the_kept_steps(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    for step in range(10, 60, 10):
        store.put(lease, step, b"s", keep=step == 20)
    assert store.prune(lease.run_id, keep_latest=2) == [10, 30]
    assert [i.step for i in store.list_checkpoints(lease.run_id)] == [20, 40, 50]


def test_unknown_steps_and_runs_without_checkpoints_raise_checkpoint_not_found(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    with pytest.raises(CheckpointNotFound):
        store.get(lease.run_id)
    store.put(lease, 10, b"ten")
    with pytest.raises(CheckpointNotFound):
        store.get(lease.run_id, 11)
    with pytest.raises(CheckpointNotFound):
        store.delete(lease.run_id, 11)
    with pytest.raises(CheckpointNotFound):
        store.get(lease.run_id + 1000)


def test_the_lease_holder_overwrites_a_step_atomically(store: CheckpointStore) -> None:
    """Readers during overwrites see one whole version or the next, never a mix or a failed check."""
    lease = running_run(store.database_url)
    versions = [bytes([v]) * 300_000 for v in range(8)]
    first = store.put(lease, 100, versions[0])
    seen: set[bytes] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.add(store.get(lease.run_id, 100)[1])
            except Exception as exc:
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in versions[1:]:
            store.put(lease, 100, version)
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert seen <= set(versions)
    assert [i.step for i in store.list_checkpoints(lease.run_id)] == [100]
    assert store.get(lease.run_id, 100)[1] == versions[-1]
    with pytest.raises(BlobMissing):
        store.blobs.get_blob(first.blob_key)


def test_a_fenced_off_writer_is_refused_and_overwrites_nothing(store: CheckpointStore) -> None:
    old = running_run(store.database_url)
    store.put(old, 100, b"old worker, step 100")
    new = reclaim(store.database_url, old.run_id)
    store.put(new, 100, b"new worker, step 100")
    blobs = store.blobs
    assert isinstance(blobs, RecordingBlobs)
    for step in (100, 200):
        with pytest.raises(CheckpointFenced) as refused:
            store.put(old, step, b"late write of the old worker")
        assert isinstance(refused.value, LeaseLost)  # what a refused metric flush raises
        with pytest.raises(BlobMissing):
            blobs.get_blob(blobs.keys[-1])  # its blob is gone, not left behind
    info, data = store.get(old.run_id)
    assert (info.step, info.fencing_token, data) == (100, new.token, b"new worker, step 100")
    assert [i.step for i in store.list_checkpoints(old.run_id)] == [100]


def test_a_run_that_is_no_longer_running_takes_no_checkpoint(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    with session_scope(store.database_url) as session:
        expire_leases(session, now=utcnow() + timedelta(days=1))
    with pytest.raises(CheckpointFenced):
        store.put(lease, 1, b"x")


def test_a_blob_that_does_not_match_its_sha256_is_detected(store: CheckpointStore) -> None:
    lease = running_run(store.database_url)
    info = store.put(lease, 100, b"the real bytes")
    store.blobs.put_blob(info.blob_key, b"the real byteZ")
    with pytest.raises(CheckpointCorrupt):
        store.get(lease.run_id, 100)


def test_unknown_checkpoint_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="GROKLAB_CHECKPOINT_URL"):
        CheckpointStore.from_settings(Settings(checkpoint_url="ftp://host/folder"))


def test_a_put_waits_out_an_s3_server_that_is_down_and_succeeds_after_its_restart(
    seaweedfs: SeaweedFS, fresh_pg_url: str
) -> None:
    upgrade(fresh_pg_url)
    store = CheckpointStore.from_settings(Settings(database_url=fresh_pg_url, **seaweedfs.store_settings()))
    lease = running_run(fresh_pg_url)
    store.put(lease, 50, b"before the outage")
    data = b"written across the outage" * 10_000
    outcome: list[object] = []
    seaweedfs.stop()
    try:
        writer = threading.Thread(target=lambda: outcome.append(_put_or_error(store, lease, 100, data)))
        writer.start()
        time.sleep(3)
        assert writer.is_alive() and outcome == []  # still retrying, neither done nor failed
    finally:
        seaweedfs.start()
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert store.get(lease.run_id)[1] == data
    assert store.get(lease.run_id, 50)[1] == b"before the outage"


def _put_or_error(store: CheckpointStore, lease: Lease, step: int, data: bytes) -> object:
    try:
        return store.put(lease, step, data)
    except Exception as exc:
        return exc


def test_the_reconciler_deletes_a_blob_whose_index_row_never_committed_once_it_is_old(
    settings: Settings, store: CheckpointStore
) -> None:
    from groklab.reconciler import sweep_orphan_checkpoints

    lease = running_run(store.database_url)
    indexed = store.put(lease, 10, b"indexed")
    # A worker that died between writing its blob and indexing it; a run that is gone; a key
    # groklab never writes, which no sweep may touch.
    orphan = f"runs/{lease.run_id}/20-{lease.token}-{uuid.uuid4().hex}.ckpt"
    of_a_deleted_run = f"runs/{lease.run_id + 1000}/5-1-{uuid.uuid4().hex}.ckpt"
    foreign = f"runs/{lease.run_id}/notes.txt"
    for key in (orphan, of_a_deleted_run, foreign):
        store.blobs.put_blob(key, b"left behind")
    time.sleep(2.5)
    fresh = f"runs/{lease.run_id}/30-{lease.token}-{uuid.uuid4().hex}.ckpt"  # a write still in flight
    store.blobs.put_blob(fresh, b"being indexed")

    deleted = sweep_orphan_checkpoints(settings.model_copy(update={"checkpoint_orphan_seconds": 2.0}))

    assert sorted(deleted) == sorted([orphan, of_a_deleted_run])
    for key in (orphan, of_a_deleted_run):
        with pytest.raises(BlobMissing):
            store.blobs.get_blob(key)
    for key in (fresh, foreign):
        assert store.blobs.get_blob(key)
    assert store.get(lease.run_id, 10) == (indexed, b"indexed")
