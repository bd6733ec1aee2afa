"""Liveness (/healthz) and readiness (/readyz: database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CeleryDep, SettingsDep
from api.schemas import HealthOut
from groklab.dispatch import broker_reachable
from groklab.store.database import database_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(settings: SettingsDep, celery: CeleryDep) -> JSONResponse:
    checks = {"database": database_reachable(settings.resolved_database_url), "broker": broker_reachable(celery)}
    ready = all(checks.values())
    body = HealthOut(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
