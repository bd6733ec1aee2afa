"""The metric query over HTTP: the format an Accept header asks for, an answer as a response (gzip
bytes as they are, or uncompressed), and ETags for finished runs. The answer itself, its rows and
their JSON, CSV and NDJSON bodies, is groklab/metric_answers.py's."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from fastapi import Response

from groklab.metric_answers import MEDIA_TYPES, Answer, MetricFormat, MetricQuery
from groklab.store import answer_cache


def format_from_accept(accept: str) -> MetricFormat:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media == "text/csv":
            return "csv"
        if media in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
            return "ndjson"
        if media in ("application/json", "*/*"):
            return "json"
    return "json"


def answer_response(answer: Answer, fmt: MetricFormat, headers: dict[str, str], *, accepts_gzip: bool) -> Response:
    """The answer with its cache outcome (X-Answer-Cache) and next cursor (X-Next-Cursor). A kept
    answer is gzip bytes: sent as they are to a client that accepts gzip, else uncompressed; the
    gzip middleware leaves an encoded response alone and compresses the others."""
    if answer.cache:
        headers = {**headers, "X-Answer-Cache": answer.cache}
    if answer.next_cursor:
        headers = {**headers, "X-Next-Cursor": answer.next_cursor}
    if not answer.gzipped:
        return Response(answer.body, media_type=MEDIA_TYPES[fmt], headers=headers)
    if not accepts_gzip:
        return Response(gzip.decompress(answer.body), media_type=MEDIA_TYPES[fmt], headers=headers)
    encoded = {**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    return Response(answer.body, media_type=MEDIA_TYPES[fmt], headers=encoded)


def etag(query: MetricQuery, fmt: MetricFormat, runs: Sequence[Any]) -> str:
    state = {
        "query": query.model_dump(exclude={"format"}),
        "format": fmt,
        "runs": [answer_cache.run_fingerprint(run) for run in runs],
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or tag in tags
