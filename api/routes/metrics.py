"""/v1/metrics/query (points or buckets, as JSON, CSV or NDJSON) and a run's live metric stream."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Principal, reader
from api.deps import get_session
from api.schemas import MetricFormat, MetricQuery, MetricQueryOut
from groklab.errors import InvalidInput
from groklab.settings import Settings, get_settings
from groklab.store import metric_query
from groklab.store import runs as run_store
from groklab.store.database import session_scope

router = APIRouter(tags=["metrics"])

MEDIA_TYPES: dict[MetricFormat, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
POINT_COLUMNS = ("run_id", "name", "step", "value")
BUCKET_COLUMNS = ("run_id", "name", "step_start", "step_end", "count", "min", "max", "mean", "last")
STREAM_POLL_SECONDS = 0.5

_QUERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": MetricQueryOut,
        "description": "JSON envelope, or the rows alone as CSV (header row) or NDJSON (one object "
        "a line); for CSV and NDJSON the next page's cursor is in the X-Next-Cursor header.",
        "content": {"text/csv": {}, "application/x-ndjson": {}},
    },
    304: {"description": "If-None-Match matched: every selected run has finished, nothing changed."},
}


@router.post("/v1/metrics/query", responses=_QUERY_RESPONSES, response_model=None)
def query_metrics(
    query: MetricQuery,
    request: Request,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Response:
    """Metric rows of any set of runs x names x step range, in the long layout.

    With `max_points`, each series comes back as at most that many buckets (step_start, step_end,
    count, min, max, mean, last) tiling [start_step, end_step]; without it, raw points a page of
    `limit` at a time. Unknown names yield no rows; unknown run ids are a 404.
    """
    return _answer(query, request, session, principal.owner)


def _get_parameters() -> list[dict[str, Any]]:
    """MetricQuery's fields as the GET form's query parameters, for the OpenAPI document only.

    Generated from the model so that the two cannot drift; _query_from_params stays the one
    validator. Lists travel comma-separated and `where` as a JSON object, so both are strings.
    """
    properties = MetricQuery.model_json_schema()["properties"]
    parameters: list[dict[str, Any]] = []
    for name, field in MetricQuery.model_fields.items():
        prop = properties[name]
        schema = next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), {})
        description = field.description or prop.get("title", name)
        if schema.get("type") == "array":
            items = schema.get("items", {})
            kinds = f"; each one of {', '.join(items['enum'])}" if "enum" in items else ""
            description += f" Comma-separated{kinds}."
            schema = {"type": "string"}
        elif schema.get("type") == "object":
            description += " A JSON object."
            schema = {"type": "string"}
        else:
            schema = {k: v for k, v in schema.items() if k not in ("title", "description", "default")}
            if field.default is not None:
                schema["default"] = field.default
        parameters.append(
            {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
        )
    return parameters


@router.get(
    "/v1/metrics/query",
    responses=_QUERY_RESPONSES,
    response_model=None,
    openapi_extra={"parameters": _get_parameters()},
)
def query_metrics_get(
    request: Request, principal: Principal = Depends(reader), session: Session = Depends(get_session)
) -> Response:
    """The same query as query parameters: lists comma-separated, `where` as a JSON object."""
    return _answer(_query_from_params(request), request, session, principal.owner)


def _query_from_params(request: Request) -> MetricQuery:
    params = request.query_params
    unknown = set(params) - set(MetricQuery.model_fields)
    if unknown:
        raise InvalidInput(f"unknown query parameter {sorted(unknown)[0]}", field=sorted(unknown)[0])
    body: dict[str, Any] = {k: v for k, v in params.items() if v != ""}
    for listed in ("run_ids", "status", "names"):
        if listed in body:
            body[listed] = [item.strip() for item in body[listed].split(",") if item.strip()]
    if "where" in body:
        try:
            body["where"] = json.loads(body["where"])
        except json.JSONDecodeError as exc:
            raise InvalidInput("where must be a JSON object", field="where") from exc
    try:
        return MetricQuery.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("query", *err["loc"])} for err in exc.errors()]
        ) from exc


def _answer(query: MetricQuery, request: Request, session: Session, owner: str) -> Response:
    fmt = query.format or _format_from_accept(request.headers.get("accept", ""))
    runs = metric_query.select_runs(
        session,
        run_ids=query.run_ids,
        experiment_id=query.experiment_id,
        statuses=query.status,
        where=query.where,
        owner=owner,
    )
    # Finished runs never gain points, so their answer can be cached; a running one's cannot.
    etag = _etag(query, fmt, runs) if runs and metric_query.all_finished(runs) else None
    if etag is not None and _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    rows = metric_query.read_metrics(
        session,
        runs,
        names=query.names,
        start_step=query.start_step,
        end_step=query.end_step,
        max_points=query.max_points,
        cursor=query.cursor,
        limit=query.limit,
    )
    if rows.buckets is not None:
        columns = BUCKET_COLUMNS
        records = [
            (b.run_id, b.name, b.step_start, b.step_end, b.count, b.min, b.max, b.mean, b.last)
            for b in rows.buckets
        ]
    else:
        columns = POINT_COLUMNS
        records = [(p.run_id, p.name, p.step, p.value) for p in rows.points or []]
    headers = {"ETag": etag} if etag else {}
    if rows.next_cursor:
        headers["X-Next-Cursor"] = rows.next_cursor
    if fmt == "csv":
        body = _csv(columns, records)
    elif fmt == "ndjson":
        body = "".join(json.dumps(dict(zip(columns, r))) + "\n" for r in records)
    else:
        body = json.dumps(
            {
                "mode": "buckets" if rows.buckets is not None else "points",
                "start_step": rows.start_step,
                "end_step": rows.end_step,
                "bucket_width": rows.bucket_width,
                "rows": [dict(zip(columns, r)) for r in records],
                "next_cursor": rows.next_cursor,
            }
        )
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


def _format_from_accept(accept: str) -> MetricFormat:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media == "text/csv":
            return "csv"
        if media in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
            return "ndjson"
        if media in ("application/json", "*/*"):
            return "json"
    return "json"


def _csv(columns: tuple[str, ...], records: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    # None becomes an empty cell, which pandas reads as NaN; floats print as round-tripping repr.
    writer.writerows(records)
    return out.getvalue()


def _etag(query: MetricQuery, fmt: MetricFormat, runs: list[Any]) -> str:
    state = {
        "query": query.model_dump(exclude={"format"}),
        "format": fmt,
        "runs": [(r.id, r.status, r.finished_at.isoformat() if r.finished_at else None) for r in runs],
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


@router.get("/v1/runs/{run_id}/metrics/stream", response_class=EventSourceResponse)
async def stream_metrics(
    run_id: int,
    after_step: int = -1,
    last_event_id: str | None = Header(None),
    principal: Principal = Depends(reader),
    settings: Settings = Depends(get_settings),
) -> EventSourceResponse:
    """Server-Sent Events of the run's new points, one `points` event per step, then `end`.

    Each `points` event's id is its step, so a client that reconnects with Last-Event-ID (which
    wins over `after_step`) gets every later step exactly once. A step is sent once the run has
    moved past it or finished. `end` carries the run's final status.
    """
    position = after_step
    if last_event_id is not None:
        if not last_event_id.lstrip("-").isdigit():
            raise InvalidInput("Last-Event-ID must be a step this stream sent", field="Last-Event-ID")
        position = int(last_event_id)
    if position < -1:
        raise InvalidInput("after_step must be -1 or more", field="after_step")
    url = settings.resolved_database_url

    def poll(after: int) -> tuple[str, list[tuple[int, dict[str, float | None]]]]:
        with session_scope(url) as session:
            return metric_query.steps_after(session, run_id, after)

    def check_owner() -> None:
        with session_scope(url) as session:
            run_store.get_run(session, run_id, owner=principal.owner)

    await run_in_threadpool(check_owner)
    status, steps = await run_in_threadpool(poll, position)

    async def events() -> AsyncIterator[ServerSentEvent]:
        nonlocal status, steps, position
        while True:
            for step, values in steps:
                data = json.dumps({"run_id": run_id, "step": step, "values": values})
                yield ServerSentEvent(data=data, event="points", id=str(step))
                position = step
            if status in run_store.FINISHED_STATUSES and not steps:
                yield ServerSentEvent(
                    data=json.dumps({"run_id": run_id, "status": status, "step": position}),
                    event="end",
                )
                return
            if not steps:
                await asyncio.sleep(STREAM_POLL_SECONDS)
            status, steps = await run_in_threadpool(poll, position)

    return EventSourceResponse(events(), ping=15)
