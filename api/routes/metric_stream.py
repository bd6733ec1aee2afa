"""/v1/runs/{id}/metrics/stream: a run's new points as Server-Sent Events, until it finishes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import ReaderDep
from api.deps import SettingsDep
from groklab.errors import InvalidInput
from groklab.store import metric_reads
from groklab.store import runs as run_store
from groklab.store.database import session_scope

router = APIRouter(tags=["metrics"])
STREAM_POLL_SECONDS = 0.5


@router.get("/v1/runs/{run_id}/metrics/stream", response_class=EventSourceResponse)
async def stream_metrics(
    run_id: int,
    principal: ReaderDep,
    settings: SettingsDep,
    after_step: int = -1,
    last_event_id: str | None = Header(None),
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
    # Sessions of their own, one per poll: the request's would stay checked out for the stream.
    url = settings.resolved_database_url

    def poll(after: int) -> tuple[str, list[tuple[int, dict[str, float | None]]]]:
        with session_scope(url) as session:
            return metric_reads.steps_after(session, run_id, after)

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
