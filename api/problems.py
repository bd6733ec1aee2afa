"""The one place that turns errors into RFC 9457 `application/problem+json` responses."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.spec import SpecError, error_field
from groklab.errors import GroklabError
from groklab.outages import OUTAGE_ERRORS, OUTAGES, first_line, outage_of

PROBLEM_JSON = "application/problem+json"


class ProblemError(BaseModel):
    field: str | None = None
    message: str
    type: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every 4xx/5xx answer."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None
    dependency: str | None = None
    """On a 503: the server that cannot be reached, "database" or "broker"."""


# Documented on every operation, so that clients (and the schema fuzzer) know error bodies' shape.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": Problem,
        "description": "A problem: bad input (422), no or bad key (401), missing scope (403), "
        "not found (404), conflict (409), body too large (413), a limit reached (429).",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
    503: {
        "model": Problem,
        "description": "The database or the broker cannot be reached: an outage, not a bug. The "
        "problem's `dependency` names it; retry after `Retry-After` seconds.",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}
OUTAGE_RETRY_AFTER_SECONDS = 5
"""What a 503 for an outage asks clients to wait before the next try: outages seen here last
seconds to minutes, and a retry costs the api one failed connection."""


def problem_response(description: str) -> dict[str, Any]:
    """One operation's documented problem answer (e.g. its 409), with the problem media type."""
    return {
        "model": Problem,
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        # Without FastAPI's 'body'/'query' prefix the field reads like the spec.
        field, message = error_field(err, ignore=("body", "query", "path", "header"))
        errors.append({"field": field or "body", "message": message, "type": err.get("type")})
    return errors


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError) -> JSONResponse:
        return problem(422, "Invalid experiment spec", str(exc), errors=[{"field": exc.field, "message": exc.message}])

    @app.exception_handler(GroklabError)
    async def _domain(request: Request, exc: GroklabError) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
        return problem(exc.status_code, exc.title, exc.detail, errors=errors, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        errors = [{"field": "body", "message": str(exc.detail)}] if exc.status_code == 413 else None
        return problem(
            exc.status_code,
            HTTPStatus(exc.status_code).phrase,
            str(exc.detail),
            errors=errors,
            headers=exc.headers,  # e.g. Allow on a 405
        )

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        # One handler for every route: a request that found the database or the broker down is
        # told so, with when to try again, instead of a 500 a client cannot tell from a bug.
        dependency = outage_of(exc)
        if dependency is None:  # a database error that is not about reaching it: a bug, as before
            raise exc
        OUTAGES[dependency].failed(exc, f"{request.method} {request.url.path}")
        return problem(
            503, "Service Unavailable",
            f"the {dependency} cannot be reached ({first_line(exc)}); nothing was changed that is not "
            f"stored; retry after {OUTAGE_RETRY_AFTER_SECONDS} s",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)}, dependency=dependency,
        )  # fmt: skip

    for error in OUTAGE_ERRORS:
        app.add_exception_handler(error, _outage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem(500, "Internal server error", "an unexpected error occurred; see the server log")
