"""Who is asking: the Bearer key's owner and scopes, or owner 'local' when auth is off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from groklab.errors import Forbidden, Unauthorized
from groklab.settings import Settings, get_settings
from groklab.store import keys as key_store
from groklab.store.database import session_scope
from groklab.store.models import LOCAL_OWNER

READ, WRITE = "read", "write"
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `groklab keys create`, sent as `Authorization: Bearer gl_...`.",
)


@dataclass(frozen=True)
class Principal:
    owner: str
    scopes: frozenset[str]


LOCAL = Principal(owner=LOCAL_OWNER, scopes=frozenset({READ, WRITE}))


def _challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    # RFC 6750 section 3: the error code tells a client whether to ask for a new key or more scope.
    parts = ['Bearer realm="groklab"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def current_principal(
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
    settings: Settings = Depends(get_settings),
) -> Principal:
    if not settings.auth_required():
        return LOCAL
    if credentials is None:
        raise Unauthorized("this api needs an API key: send `Authorization: Bearer <key>`", headers=_challenge())
    # A session of its own, returned at once: the request's session would stay checked out for
    # the whole life of a metric stream.
    with session_scope(settings.resolved_database_url) as session:
        key = key_store.find_active_key(session, credentials.credentials)
        principal = key and Principal(owner=key.owner, scopes=key_store.key_scopes(key))
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked", headers=_challenge("invalid_token"))
    return principal


def _scoped(scope: str) -> Callable[[Principal], Principal]:
    def require(principal: Principal = Depends(current_principal)) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"the API key lacks the '{scope}' scope", headers=_challenge("insufficient_scope", scope))
        return principal

    return require


reader = _scoped(READ)
writer = _scoped(WRITE)
CallerDep = Annotated[Principal, Depends(current_principal)]
"""The caller, whatever its scopes (GET /v1/whoami)."""
ReaderDep = Annotated[Principal, Depends(reader)]
"""The caller of every read (GET, and POST queries that change nothing)."""
WriterDep = Annotated[Principal, Depends(writer)]
"""The caller of every change: submitting experiments, cancelling runs."""
