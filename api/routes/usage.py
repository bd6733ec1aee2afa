"""/v1/usage: what the caller's runs store and will store, against its storage bound."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from api.auth import ReaderDep
from api.deps import SessionDep, SettingsDep
from api.schemas import UsageOut
from groklab.storage import METRIC_POINT_BYTES
from groklab.store.quotas import owner_usage

router = APIRouter(tags=["usage"])


@router.get("/v1/usage", response_model=UsageOut)
def usage(principal: ReaderDep, session: SessionDep, settings: SettingsDep) -> UsageOut:
    """Stored and planned bytes, runs and points of the caller's owner: a submission is refused
    (429) once stored + planned + its own would pass max_stored_bytes."""
    counted = owner_usage(session, principal.owner)
    return UsageOut(
        owner=principal.owner,
        **dataclasses.asdict(counted),
        stored_bytes=counted.stored_bytes,
        planned_bytes=counted.planned_bytes,
        metric_point_bytes=METRIC_POINT_BYTES,
        max_stored_bytes=settings.max_stored_bytes_per_owner,
    )
