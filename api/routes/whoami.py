"""/v1/whoami: who the caller's key makes it, so a client can check a key before it sends work."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import CallerDep
from api.deps import SettingsDep
from api.schemas import WhoAmIOut

router = APIRouter(tags=["auth"])


@router.get("/v1/whoami", response_model=WhoAmIOut)
def whoami(principal: CallerDep, settings: SettingsDep) -> WhoAmIOut:
    """The owner and scopes of the key sent (401 for a missing, unknown or revoked key)."""
    return WhoAmIOut(owner=principal.owner, scopes=sorted(principal.scopes), auth_required=settings.auth_required())
