"""Run checkpoints: bytes in the database, a folder or S3; an index fenced by run leases in the database.

A put writes the bytes under a key of their own (run, step, the writer's fencing token and a
nonce), then points the (run, step) index row at it in a transaction that renews the writer's
lease, as a metric flush does. So a reader sees the old checkpoint or the new one, never a mix;
a fenced-off writer is refused and its blob deleted, never touching the winner's; and a store
that is down is waited out with retries instead of failing the run.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import OperationalError
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from groklab.settings import Settings
from groklab.store.database import session_scope
from groklab.store.leases import Lease, LeaseLost, renew
from groklab.store.models import CheckpointChunk, CheckpointRecord, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")

# The database store's row size: a few MiB keeps each row well inside a driver's buffers, while
# the paper model's checkpoint (2.7 MB with its AdamW state) is still one row.
CHUNK_BYTES = 4 * 1024 * 1024


class CheckpointNotFound(LookupError):
    """No checkpoint at that step (or none at all) for the run."""


class CheckpointCorrupt(RuntimeError):
    """The stored bytes do not match the SHA-256 recorded when they were written."""


class CheckpointFenced(LeaseLost):
    """The writer's lease moved on: its checkpoint is refused, as its metric flushes are."""


class BlobMissing(LookupError):
    """A blob store has nothing under that key."""


@dataclass(frozen=True)
class CheckpointInfo:
    run_id: int
    step: int
    size_bytes: int
    sha256: str
    fencing_token: int
    kept: bool
    created_at: datetime
    blob_key: str


class BlobStore(Protocol):
    """Where checkpoint bytes live. Keys are never reused, so a put never replaces a blob in use."""

    def put_blob(self, key: str, data: bytes) -> None: ...

    def get_blob(self, key: str) -> bytes:
        """The blob's bytes; BlobMissing if there is none."""
        ...

    def delete_blob(self, key: str) -> None:
        """Delete the blob; a missing one is not an error."""
        ...

    def list_blobs(self, older_than: datetime) -> Iterator[str]:
        """Keys of the blobs under runs/ last written before `older_than` (by the store's own
        clock where it has one), unfinished writes included: where orphans are looked for."""
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """Whether `exc` means the store is unreachable for now, so the call is worth retrying."""
        ...


class DatabaseBlobStore:
    """Blobs as rows of chunks in groklab's own database: every host that reaches it reaches them."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def put_blob(self, key: str, data: bytes) -> None:
        chunks = [data[i : i + CHUNK_BYTES] for i in range(0, max(len(data), 1), CHUNK_BYTES)]
        with session_scope(self.database_url) as session:
            # A retried put whose first try committed unseen finds its own chunks here.
            session.execute(delete(CheckpointChunk).where(CheckpointChunk.blob_key == key))
            session.execute(
                insert(CheckpointChunk),
                [{"blob_key": key, "seq": seq, "data": chunk} for seq, chunk in enumerate(chunks)],
            )

    def get_blob(self, key: str) -> bytes:
        with session_scope(self.database_url) as session:
            chunks = session.scalars(
                select(CheckpointChunk.data).where(CheckpointChunk.blob_key == key).order_by(CheckpointChunk.seq)
            ).all()
        if not chunks:
            raise BlobMissing(key)
        return b"".join(chunks)

    def delete_blob(self, key: str) -> None:
        with session_scope(self.database_url) as session:
            session.execute(delete(CheckpointChunk).where(CheckpointChunk.blob_key == key))

    def list_blobs(self, older_than: datetime) -> Iterator[str]:
        with session_scope(self.database_url) as session:
            keys = session.scalars(
                select(CheckpointChunk.blob_key).where(CheckpointChunk.seq == 0, CheckpointChunk.created_at < older_than)
            ).all()
        yield from keys

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OperationalError)


# What a shared folder (NFS, SMB) answers while its server is away.
_UNREACHABLE_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH}


class FileBlobStore:
    """Blobs as files under a local or shared folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put_blob(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)

    def get_blob(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(key) from None

    def delete_blob(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def list_blobs(self, older_than: datetime) -> Iterator[str]:
        cutoff = older_than.timestamp()
        for path in (self.root / "runs").glob("*/*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    yield path.relative_to(self.root).as_posix()
            except FileNotFoundError:
                continue  # replaced or deleted since the listing

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS


class S3BlobStore:
    """Blobs as objects under s3://bucket/prefix of any S3-compatible service (AWS, MinIO, SeaweedFS)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> S3BlobStore:
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.s3_region,
            config=Config(
                # Self-hosted stores answer on a bare host name, without per-bucket subdomains.
                s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                # Fail fast on an unreachable endpoint: the store's own retries wait out an outage.
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )
        return cls(client, parsed.netloc, parsed.path)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_blob(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)

    def get_blob(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise BlobMissing(key) from None
            raise
        return bytes(response["Body"].read())

    def delete_blob(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def list_blobs(self, older_than: datetime) -> Iterator[str]:
        start = len(self._object(""))
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._object("runs/"))
        for page in pages:
            for item in page.get("Contents", []):
                if item["LastModified"] < older_than:
                    yield item["Key"][start:]

    def is_transient(self, exc: BaseException) -> bool:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or status == 429
        return isinstance(exc, (ConnectionError, HTTPClientError))


def blob_store(settings: Settings) -> BlobStore:
    """The blob store GROKLAB_CHECKPOINT_URL names: file:///path, s3://bucket/prefix, or the database."""
    url = settings.checkpoint_url
    if not url:
        return DatabaseBlobStore(settings.resolved_database_url)
    scheme = urlparse(url).scheme
    if scheme == "file":
        return FileBlobStore(Path(urlparse(url).path))
    if scheme == "s3":
        return S3BlobStore.from_url(url, settings)
    raise ValueError(f"GROKLAB_CHECKPOINT_URL: {url!r} is neither file:///path nor s3://bucket/prefix")


def _info(row: CheckpointRecord) -> CheckpointInfo:
    return CheckpointInfo(
        run_id=row.run_id, step=row.step, size_bytes=row.size_bytes, sha256=row.sha256,
        fencing_token=row.fencing_token, kept=row.kept, created_at=row.created_at, blob_key=row.blob_key,
    )  # fmt: skip


# The keys put() writes (and a file store's unfinished writes of them): only these are ever
# taken for orphans, never another file that happens to sit under the store's root.
_BLOB_KEY = re.compile(r"^runs/(\d+)/[^/]+\.(ckpt|partial)$")


class _BlobAged(Exception):
    """A blob was not indexed within half the orphan age: the sweeper may be about to take it."""


class CheckpointStore:
    def __init__(
        self,
        database_url: str,
        blobs: BlobStore,
        *,
        lease_seconds: float,
        outage_seconds: float = 600.0,
        orphan_seconds: float = 3600.0,
    ) -> None:
        self.database_url = database_url
        self.blobs = blobs
        self.lease_seconds = lease_seconds
        self.outage_seconds = outage_seconds
        self.orphan_seconds = orphan_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointStore:
        return cls(
            settings.resolved_database_url, blob_store(settings), lease_seconds=settings.lease_seconds,
            orphan_seconds=settings.checkpoint_orphan_seconds,
        )  # fmt: skip

    def put(self, lease: Lease, step: int, data: bytes, *, keep: bool = False, tries: int = 3) -> CheckpointInfo:
        """Store `data` as the run's checkpoint at `step`, replacing any there.

        Raises CheckpointFenced, having stored nothing, if `lease` is no longer the run's.
        `keep` spares it from `prune`.
        """
        key = f"runs/{lease.run_id}/{step}-{lease.token}-{uuid.uuid4().hex}.ckpt"
        started = time.monotonic()
        self._retry(self.blobs.put_blob, key, data)

        def index() -> tuple[CheckpointInfo, str | None]:
            # delete_orphans takes an unindexed blob once it is orphan_seconds old; indexing one
            # half that old at most leaves the other half for this transaction and clock skew.
            if time.monotonic() - started > self.orphan_seconds / 2:
                raise _BlobAged
            return self._index(lease, step, key, hashlib.sha256(data).hexdigest(), len(data), keep)

        try:
            info, replaced = self._retry(index)
        except CheckpointFenced:
            self._forget(key)
            raise
        except _BlobAged:
            self._forget(key)
            if tries <= 1:
                raise RuntimeError(
                    f"run {lease.run_id}: checkpoint at step {step} was not indexed within half of "
                    f"GROKLAB_CHECKPOINT_ORPHAN_SECONDS ({self.orphan_seconds:g} s) in any try; raise it"
                ) from None
            log.warning("run %s: checkpoint at step %s took too long to index; writing it again", lease.run_id, step)
            return self.put(lease, step, data, keep=keep, tries=tries - 1)
        if replaced is not None:
            self._forget(replaced)
        return info

    def get(self, run_id: int, step: int | None = None) -> tuple[CheckpointInfo, bytes]:
        """The checkpoint at `step` (the latest when None) and its bytes, checked against their SHA-256."""
        for _ in range(3):
            info = self._retry(self._find, run_id, step)
            try:
                data = self._retry(self.blobs.get_blob, info.blob_key)
            except BlobMissing:
                continue  # replaced between the two reads: the index now names its successor
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise CheckpointCorrupt(f"run {run_id}: checkpoint at step {info.step} fails its SHA-256 check")
            return info, data
        raise CheckpointCorrupt(f"run {run_id}: the bytes of the checkpoint at step {info.step} are missing")

    def list_checkpoints(self, run_id: int) -> list[CheckpointInfo]:
        """The run's checkpoints in step order."""

        def read() -> list[CheckpointInfo]:
            with session_scope(self.database_url) as session:
                rows = session.scalars(
                    select(CheckpointRecord).where(CheckpointRecord.run_id == run_id).order_by(CheckpointRecord.step)
                )
                return [_info(row) for row in rows]

        return self._retry(read)

    def delete(self, run_id: int, step: int) -> None:
        def unindex() -> str:
            with session_scope(self.database_url) as session:
                row = session.get(CheckpointRecord, (run_id, step))
                if row is None:
                    raise CheckpointNotFound(f"run {run_id} has no checkpoint at step {step}")
                session.delete(row)
                return row.blob_key

        self._forget(self._retry(unindex))

    def delete_run(self, run_id: int) -> int:
        """Delete every checkpoint of the run (before the run itself: its rows cascade, blobs do not)."""
        return len(self._delete_all_but(run_id, spared=lambda infos: set()))

    def prune(self, run_id: int, *, keep_latest: int = 1) -> list[int]:
        """Delete the run's checkpoints but the `keep_latest` latest and the kept ones; the steps deleted."""

        def spared(infos: list[CheckpointInfo]) -> set[int]:
            latest = infos[len(infos) - keep_latest :] if keep_latest > 0 else []
            return {info.step for info in latest} | {info.step for info in infos if info.kept}

        return self._delete_all_but(run_id, spared)

    def _delete_all_but(self, run_id: int, spared: Callable[[list[CheckpointInfo]], set[int]]) -> list[int]:
        def unindex() -> list[CheckpointInfo]:
            with session_scope(self.database_url) as session:
                rows = session.scalars(
                    select(CheckpointRecord).where(CheckpointRecord.run_id == run_id).order_by(CheckpointRecord.step)
                ).all()
                keep = spared([_info(row) for row in rows])
                doomed = [row for row in rows if row.step not in keep]
                for row in doomed:
                    session.delete(row)
                return [_info(row) for row in doomed]

        deleted = self._retry(unindex)
        for info in deleted:
            self._forget(info.blob_key)
        return [info.step for info in deleted]

    def delete_orphans(self) -> list[str]:
        """Delete the blobs no index row names that are older than orphan_seconds: a writer that
        died between its blob and its index row, a replaced blob whose deletion failed. The keys
        deleted. One try, no waiting out an outage: the next sweep finds what this one missed."""
        older_than = utcnow() - timedelta(seconds=self.orphan_seconds)
        listed: dict[int, list[str]] = {}
        for key in self.blobs.list_blobs(older_than):
            match = _BLOB_KEY.match(key)
            if match:
                listed.setdefault(int(match.group(1)), []).append(key)
        run_ids = sorted(listed)
        orphans = []
        for start in range(0, len(run_ids), 1000):
            batch = run_ids[start : start + 1000]

            with session_scope(self.database_url) as session:
                named = set(session.scalars(select(CheckpointRecord.blob_key).where(CheckpointRecord.run_id.in_(batch))))
            orphans += [key for run_id in batch for key in listed[run_id] if key not in named]
        for key in orphans:
            self._forget(key)
        return orphans

    def _index(self, lease: Lease, step: int, key: str, sha256: str, size: int, keep: bool) -> tuple[CheckpointInfo, str | None]:
        """Point (run, step) at `key` if `lease` still holds the run; the key it pointed at before."""
        with session_scope(self.database_url) as session:
            row = session.get(CheckpointRecord, (lease.run_id, step))
            if row is not None and row.blob_key == key:
                return _info(row), None  # an earlier try committed but its answer was lost
            try:
                renew(session, lease, lease_seconds=self.lease_seconds)
            except LeaseLost as exc:
                raise CheckpointFenced(f"checkpoint at step {step} refused: {exc}") from exc
            replaced = row.blob_key if row is not None else None
            if row is None:
                row = CheckpointRecord(run_id=lease.run_id, step=step)
                session.add(row)
            row.blob_key, row.sha256, row.size_bytes = key, sha256, size
            row.fencing_token, row.kept, row.created_at = lease.token, keep, utcnow()
            session.flush()
            return _info(row), replaced

    def _find(self, run_id: int, step: int | None) -> CheckpointInfo:
        with session_scope(self.database_url) as session:
            query = select(CheckpointRecord).where(CheckpointRecord.run_id == run_id)
            if step is not None:
                query = query.where(CheckpointRecord.step == step)
            row = session.scalars(query.order_by(CheckpointRecord.step.desc()).limit(1)).first()
            if row is None:
                where = "any checkpoint" if step is None else f"a checkpoint at step {step}"
                raise CheckpointNotFound(f"run {run_id} has no {where}")
            return _info(row)

    def _forget(self, key: str) -> None:
        """Delete a blob nothing points at; one try, since a leftover costs space, not correctness."""
        try:
            self.blobs.delete_blob(key)
        except Exception as exc:
            log.warning("checkpoint blob %s left behind: %s", key, exc)

    def _retry(self, call: Callable[..., T], *args: Any) -> T:
        """Call, waiting out an unreachable database or blob store for up to outage_seconds."""

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, OperationalError) or self.blobs.is_transient(exc)

        def report(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("checkpoint store unavailable (try %d), retrying: %s", state.attempt_number, exc)

        retrying = retry(
            retry=retry_if_exception(transient),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(self.outage_seconds),
            before_sleep=report,
            reraise=True,
        )
        return retrying(call)(*args)
