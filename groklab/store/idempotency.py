"""Idempotency-Key of experiment submissions: the key, a hash of its body and the experiment made.

A key replays for a limited time (settings.idempotency_key_hours, as payment APIs do): long enough
for any client's retries, after which the key may name a new request and its row is deleted.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from groklab.errors import Conflict
from groklab.store.models import Experiment, IdempotencyKey, utcnow


def find_replay(session: Session, *, owner: str, key: str, request_hash: str, lifetime: timedelta) -> Experiment | None:
    """The experiment an earlier request with this key made, or None; another body is a 409.
    The owner's keys older than `lifetime` are forgotten first."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.created_at < utcnow() - lifetime))
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key))
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request body; use a new key for a new experiment",
            field="Idempotency-Key",
        )
    return session.get(Experiment, row.experiment_id)


def remember(session: Session, *, owner: str, key: str, request_hash: str, experiment_id: int) -> None:
    """Called in the transaction that stores the experiment, so both exist or neither does."""
    session.add(IdempotencyKey(owner=owner, key=key, request_hash=request_hash, experiment_id=experiment_id))
    session.flush()
