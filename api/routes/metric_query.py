"""/v1/metrics/query: metric rows of any set of runs (points or buckets) as JSON, CSV or NDJSON; the
answer is groklab/metric_answers.py's, this adds the HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from api.auth import ReaderDep
from api.deps import SessionDep, SettingsDep
from api.metric_formats import answer_response, etag, etag_matches, format_from_accept
from api.query_params import metric_query_from_params, metric_query_parameters
from api.schemas import MetricQueryOut
from groklab import metric_answers
from groklab.metric_answers import MetricQuery
from groklab.settings import Settings
from groklab.store import metric_reads

router = APIRouter(tags=["metrics"])

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
    query: MetricQuery, request: Request, principal: ReaderDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Metric rows of any set of runs x names x step range, in the long layout.

    With `max_points`, each series comes back as at most that many buckets (step_start, step_end,
    count, min, max, mean, last) tiling [start_step, end_step]; without it, raw points a page of
    `limit` at a time. With `group_by` (and `max_points`), one row per group x name x bucket: the
    mean, min and max of its runs' bucket means and their number n; the envelope's `groups` lists
    each group's values and runs. Unknown names yield no rows; unknown run ids are a 404.
    """
    return _answer(query, request, session, settings, principal.owner)


@router.get(
    "/v1/metrics/query",
    responses=_QUERY_RESPONSES,
    response_model=None,
    openapi_extra={"parameters": metric_query_parameters()},
)
def query_metrics_get(request: Request, principal: ReaderDep, session: SessionDep, settings: SettingsDep) -> Response:
    """The same query as query parameters: lists comma-separated, `where` as a JSON object."""
    return _answer(metric_query_from_params(request), request, session, settings, principal.owner)


def _answer(query: MetricQuery, request: Request, session: SessionDep, settings: Settings, owner: str) -> Response:
    fmt = query.format or format_from_accept(request.headers.get("accept", ""))
    runs = metric_answers.select_runs(session, query, owner)
    # Finished runs never gain points: their answer has an ETag (and is kept, metric_answers).
    tag = etag(query, fmt, runs) if runs and metric_reads.all_finished(runs) else None
    if tag is not None and etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    found = metric_answers.answer(session, settings, query, fmt, runs, owner)
    accepts_gzip = "gzip" in request.headers.get("accept-encoding", "")
    return answer_response(found, fmt, {"ETag": tag} if tag else {}, accepts_gzip=accepts_gzip)
