"""The ASGI application: `uvicorn api.main:app`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from api.body_limit import BodySizeLimit
from api.dashboard import install_dashboard
from api.deps import get_celery
from api.ops import install_ops
from api.problems import PROBLEM_RESPONSES, install_problem_handlers
from api.routes import analysis, checkpoints, experiments, health, metric_query, metric_stream, runs, usage, whoami
from groklab.reconciler import ReconcilerThread
from groklab.settings import get_settings
from groklab.store.answer_cache import GZIP_LEVEL


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Every api process runs the reconciler: passes are idempotent, so replicas may overlap."""
    # What is loaded by now (modules, the app, its routes and schemas: ~160,000 objects) lives as
    # long as the process. Frozen, it is no longer walked by every full collection: those took
    # 60-200 ms idle, 200 ms on average under load, and stalled whichever request they fell in
    # (the listings' p99). A young generation of 10,000 objects instead of 700: a request's
    # objects mostly die before a collection instead of being promoted, so full collections
    # (45 ms each under load even with the freeze, 1-2 a second) become rare (docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    settings = get_settings()
    reconciler = None
    if settings.reconcile_seconds > 0:
        reconciler = ReconcilerThread(settings, get_celery())
        reconciler.start()
    yield
    if reconciler is not None:
        reconciler.stop()


def create_app() -> FastAPI:
    settings = get_settings()
    settings.auth_required()  # refuses to build an app with auth off on a reachable address
    app = FastAPI(
        title="groklab",
        version="0.1.0",
        description="Train and compare grokking experiments (Varma et al., 2023) over HTTP.",
        responses=PROBLEM_RESPONSES,
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # zlib's default level: a 200-run grouped answer (10 MB) compresses in 0.2 s to 1.23 MB; Starlette's
    # default, 9, takes 0.8 s for 1.19 MB.
    app.add_middleware(GZipMiddleware, minimum_size=4096, compresslevel=GZIP_LEVEL)
    if settings.cors_origins:
        # Outermost, so that preflights and error answers (401, 413) carry the headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Retry-After", "X-Next-Cursor", "ETag", "Idempotent-Replayed"],
        )
    install_problem_handlers(app)
    app.include_router(health.router)
    app.include_router(whoami.router)
    app.include_router(usage.router)
    app.include_router(experiments.router)
    app.include_router(runs.router)
    app.include_router(checkpoints.router)
    app.include_router(analysis.router)
    app.include_router(metric_query.router)
    app.include_router(metric_stream.router)
    install_dashboard(app)
    install_ops(app)
    return app


app = create_app()
