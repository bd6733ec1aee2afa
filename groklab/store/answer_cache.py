"""Answers computed from finished runs, kept in cached_answers so that they are computed once.

A finished run's points and status do not change until it is continued or retried, and either
gives it a new finished_at when it finishes again. So an answer over finished runs is keyed by
every input it has: the runs' ids, statuses, finish times and point counts (`run_fingerprint`),
the request, and a digest of the code that computes it (`code_digest`: a deployment that changes
the analysis or the fold never reads an answer of the old code). A stale entry is never read: its
key names inputs that no longer exist. `forget` deletes those of a run that is continued or
retried and the query answers of an experiment that gains runs, so they do not wait for eviction.

Bodies are gzip-compressed: a 200-run grouped query is 10 MB of JSON and 1.2 MB compressed, and
the api sends the stored bytes as they are to a client that accepts gzip. The table holds at most
`max_bytes` of bodies: each write evicts the oldest entries beyond that (`put_many`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import delete, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from groklab.store.models import CachedAnswer, Run

GZIP_LEVEL = 6
"""zlib's default: a 10 MB answer compresses in 0.2 s to 1.23 MB; level 9 takes 0.8 s for 1.19 MB."""


@dataclass(frozen=True)
class Entry:
    key: str
    experiment_id: int
    run_id: int | None
    body: bytes
    """The answer, uncompressed (put_many compresses it)."""


def code_digest(*modules: ModuleType) -> str:
    """A digest of the modules' files: part of every key, so that new code computes anew."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def run_fingerprint(run: Run) -> list[Any]:
    """What a finished run's answers depend on besides the request: a continued or retried run that
    finishes again has a new finished_at (and usually more points)."""
    return [run.id, run.status, run.finished_at.isoformat() if run.finished_at else None, run.stored_points]


def answer_key(*parts: Any) -> str:
    """SHA-256 of the parts as canonical JSON (dict keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def compress(body: bytes) -> bytes:
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def get_compressed(session: Session, keys: Sequence[str]) -> dict[str, bytes]:
    """The gzip-compressed bodies stored under any of the keys, by key: one statement."""
    found: dict[str, bytes] = {}
    for start in range(0, len(keys), 1000):  # SQLite binds at most 32,766 parameters a statement
        rows = session.execute(
            select(CachedAnswer.key, CachedAnswer.body).where(CachedAnswer.key.in_(keys[start : start + 1000]))
        )
        found.update({key: bytes(body) for key, body in rows})
    return found


def get_many(session: Session, keys: Sequence[str]) -> dict[str, bytes]:
    """The bodies stored under any of the keys, uncompressed, by key."""
    return {key: gzip.decompress(body) for key, body in get_compressed(session, keys).items()}


def put_many(session: Session, entries: Iterable[Entry], *, max_bytes: int) -> dict[str, bytes]:
    """Store the entries (a key already there is kept: it holds the same answer), then evict the
    oldest entries beyond `max_bytes` of bodies; one body over a quarter of that is not stored.
    Returns the compressed bodies by key, stored or not, for the caller to send."""
    compressed = {entry.key: (entry, compress(entry.body)) for entry in entries}
    rows = [
        {"key": key, "experiment_id": entry.experiment_id, "run_id": entry.run_id, "size_bytes": len(body), "body": body}
        for key, (entry, body) in compressed.items()
        if len(body) <= max_bytes // 4
    ]
    if rows:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        for start in range(0, len(rows), 500):
            session.execute(
                dialect.insert(CachedAnswer).on_conflict_do_nothing(index_elements=["key"]),
                rows[start : start + 500],
            )
        evict(session, max_bytes=max_bytes)
    return {key: body for key, (_, body) in compressed.items()}


# The newest entries whose bodies add up to max_bytes stay; the window sum walks the created_at
# index from the newest end.
_EVICT = text(
    "DELETE FROM cached_answers WHERE key IN (SELECT key FROM (SELECT key, sum(size_bytes) "
    "OVER (ORDER BY created_at DESC, key DESC) AS kept FROM cached_answers) AS newest WHERE kept > :max_bytes)"
)


def evict(session: Session, *, max_bytes: int) -> None:
    session.execute(_EVICT, {"max_bytes": max_bytes})


def forget(session: Session, experiment_id: int, run_ids: Sequence[int] = ()) -> None:
    """Delete the experiment's query answers and the given runs' analyses: the runs are about to
    change (continued, retried) or the experiment gains runs."""
    session.execute(
        delete(CachedAnswer).where(
            CachedAnswer.experiment_id == experiment_id,
            or_(CachedAnswer.run_id.is_(None), CachedAnswer.run_id.in_(list(run_ids))),
        )
    )


def cached_json(session: Session, keys: Mapping[int, str]) -> dict[int, Any]:
    """The JSON values stored under keys[i], by i, for those that are there."""
    found = get_many(session, list(keys.values()))
    return {i: json.loads(found[key]) for i, key in keys.items() if key in found}
