"""API keys: minted as random tokens, stored only as their SHA-256, looked up by that hash."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from groklab.errors import InvalidInput, NotFound
from groklab.store.models import ApiKey, utcnow

KEY_PREFIX = "gl_"
SCOPES = ("read", "write")
SHOWN_PREFIX_CHARS = 10


def hash_key(secret: str) -> str:
    # A plain digest suffices: keys carry 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = {item.strip() for item in items if item.strip()}
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be some of {', '.join(SCOPES)}; got {text!r}", field="scopes")
    return tuple(scope for scope in SCOPES if scope in scopes)


def create_key(
    session: Session, *, owner: str, scopes: str | Iterable[str] = SCOPES, name: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key for `owner`; returns the row and the secret, which is never stored."""
    owner = owner.strip()
    if not owner or len(owner) > 100:
        raise InvalidInput("owner must be 1 to 100 characters", field="owner")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        owner=owner,
        name=name,
        prefix=secret[:SHOWN_PREFIX_CHARS],
        key_hash=hash_key(secret),
        scopes=",".join(parse_scopes(scopes)),
    )
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session, *, owner: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: int) -> ApiKey:
    """Revoking twice keeps the first revocation time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} does not exist", field="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)))


def key_scopes(key: ApiKey) -> frozenset[str]:
    return frozenset(scope for scope in key.scopes.split(",") if scope)
