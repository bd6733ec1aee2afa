"""Liveness (/healthz) and readiness (/readyz: database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import CeleryDep, SettingsDep
from api.schemas import HealthOut
from groklab.dispatch import broker_reachable
from groklab.settings import Settings
from groklab.store.database import session_scope

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(settings: SettingsDep, celery: CeleryDep) -> JSONResponse:
    checks = {"database": _database_reachable(settings), "broker": broker_reachable(celery)}
    ready = all(checks.values())
    body = HealthOut(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _database_reachable(settings: Settings) -> bool:
    try:
        with session_scope(settings.resolved_database_url) as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
