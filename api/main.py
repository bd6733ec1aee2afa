"""The ASGI application: `uvicorn api.main:app`."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware

from api.body_limit import BodySizeLimit
from api.problems import install_problem_handlers
from api.routes import analysis, experiments, health, metrics, runs
from groklab.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="groklab",
        version="0.1.0",
        description="Train and compare grokking experiments (Varma et al., 2023) over HTTP.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=4096)
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(experiments.router)
    app.include_router(runs.router)
    app.include_router(analysis.router)
    app.include_router(metrics.router)
    return app


app = create_app()
