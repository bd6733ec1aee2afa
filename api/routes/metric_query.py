"""/v1/metrics/query: metric rows of any set of runs (points or buckets) as JSON, CSV or NDJSON."""

from __future__ import annotations

import sys
from typing import Any

from fastapi import APIRouter, Request, Response

from api import metric_formats
from api.auth import ReaderDep
from api.deps import SessionDep, SettingsDep
from api.metric_formats import compressed_response, etag, etag_matches, format_from_accept, rows_response
from api.query_params import metric_query_from_params, metric_query_parameters
from api.schemas import MetricFormat, MetricQuery, MetricQueryOut
from groklab import analysis, run_labels
from groklab.settings import Settings
from groklab.store import answer_cache, downsample, metric_reads
from groklab.store.models import Run

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
    runs = metric_reads.select_runs(
        session,
        run_ids=query.run_ids,
        experiment_id=query.experiment_id,
        statuses=query.status,
        where=query.where,
        owner=owner,
    )
    # Finished runs never gain points, so their answer can be cached; a running one's cannot.
    finished = bool(runs) and metric_reads.all_finished(runs)
    tag = etag(query, fmt, runs) if finished else None
    if tag is not None and etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers={"ETag": tag})
    headers = {"ETag": tag} if tag else {}
    accepts_gzip = "gzip" in request.headers.get("accept-encoding", "")
    # Downsampled answers over finished runs are kept (raw pages are read a page at a time).
    if not finished or query.max_points is None or settings.answer_cache_bytes == 0:
        return _rows(query, fmt, runs, session, settings, headers)
    key = _cache_key(query, fmt, runs, owner)
    stored = answer_cache.get_compressed(session, [key]).get(key)
    if stored is None:
        response = _rows(query, fmt, runs, session, settings, headers)
        entry = answer_cache.Entry(key, query.experiment_id or runs[0].experiment_id, None, bytes(response.body))
        stored = answer_cache.put_many(session, [entry], max_bytes=settings.answer_cache_bytes)[key]
        headers = {**headers, "X-Answer-Cache": "miss"}
    else:
        headers = {**headers, "X-Answer-Cache": "hit"}
    return compressed_response(stored, fmt, headers, decompress=not accepts_gzip)


_CODE = answer_cache.code_digest(metric_reads, downsample, metric_formats, analysis, run_labels, sys.modules[__name__])


def _cache_key(query: MetricQuery, fmt: MetricFormat, runs: list[Run], owner: str) -> str:
    fingerprints = [answer_cache.run_fingerprint(run) for run in runs]
    return answer_cache.answer_key("metric_query", _CODE, owner, query.model_dump(exclude={"format"}), fmt, fingerprints)


def _rows(
    query: MetricQuery, fmt: MetricFormat, runs: list[Run], session: SessionDep, settings: Settings, headers: dict[str, str]
) -> Response:
    if query.group_by and query.max_points is not None:
        labels = (
            run_labels.run_labels(session, runs, cache_bytes=settings.answer_cache_bytes)
            if metric_reads.LABEL in query.group_by
            else {}
        )
        groups = metric_reads.group_runs(runs, query.group_by, labels, max_groups=settings.max_metric_groups)
        grouped = metric_reads.read_group_metrics(
            session,
            groups,
            query.group_by,
            names=query.names,
            start_step=query.start_step,
            end_step=query.end_step,
            max_points=query.max_points,
            runs=runs,
        )
        return rows_response(grouped, fmt, headers)
    rows = metric_reads.read_metrics(
        session,
        runs,
        names=query.names,
        start_step=query.start_step,
        end_step=query.end_step,
        max_points=query.max_points,
        cursor=query.cursor,
        limit=query.limit,
    )
    return rows_response(rows, fmt, headers)
