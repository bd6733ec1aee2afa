"""How metric rows travel: JSON, CSV or NDJSON, from the rows' own fields, and ETags for finished runs.

The columns of every format are the fields, in order, of the store's row types (`PointRow` and
`Bucket`), the same types the OpenAPI document shows; nothing here lists them again.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from fastapi import Response

from api.schemas import MetricFormat, MetricQuery
from groklab.store import answer_cache
from groklab.store.downsample import Bucket
from groklab.store.metric_reads import GroupRow, MetricRows, PointRow

POINT_COLUMNS = tuple(field.name for field in dataclasses.fields(PointRow))
BUCKET_COLUMNS = tuple(field.name for field in dataclasses.fields(Bucket))
GROUP_COLUMNS = tuple(field.name for field in dataclasses.fields(GroupRow) if field.name != "group")
MEDIA_TYPES: dict[MetricFormat, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}


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


def rows_response(rows: MetricRows, fmt: MetricFormat, headers: dict[str, str]) -> Response:
    """The rows in `fmt`; JSON wraps them in MetricQueryOut's envelope, CSV and NDJSON carry
    the rows alone (the next cursor is then only in the X-Next-Cursor header)."""
    if rows.group_rows is not None:
        return _groups_response(rows, fmt, headers)
    items: Sequence[Any]
    if rows.buckets is not None:
        items, columns = rows.buckets, BUCKET_COLUMNS
    else:
        items, columns = rows.points or [], POINT_COLUMNS
    records = [attrgetter(*columns)(item) for item in items]
    if rows.next_cursor:
        headers = {**headers, "X-Next-Cursor": rows.next_cursor}
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


def compressed_response(body: bytes, fmt: MetricFormat, headers: dict[str, str], *, decompress: bool) -> Response:
    """A gzip-compressed answer (groklab/store/answer_cache.py) as it is, or uncompressed for a
    client that does not accept gzip. The gzip middleware leaves an encoded response alone."""
    if decompress:
        return Response(gzip.decompress(body), media_type=MEDIA_TYPES[fmt], headers=headers)
    encoded = {**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=encoded)


def _groups_response(rows: MetricRows, fmt: MetricFormat, headers: dict[str, str]) -> Response:
    """Grouped rows: in CSV and NDJSON the group's values come first, one column per group_by path."""
    group_rows = rows.group_rows or []
    if fmt == "json":
        body = json.dumps(
            {
                "mode": "groups",
                "start_step": rows.start_step,
                "end_step": rows.end_step,
                "bucket_width": rows.bucket_width,
                # Field by field: dataclasses.asdict deep-copies each row's group, 10x slower.
                "rows": [{"group": row.group, **dict(zip(GROUP_COLUMNS, attrgetter(*GROUP_COLUMNS)(row)))} for row in group_rows],
                "next_cursor": None,
                "group_by": rows.group_by,
                "groups": [{"group": group.group, "run_ids": group.run_ids} for group in rows.groups or []],
            }
        )
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)
    keys = tuple(rows.group_by or ())
    columns = (*keys, *GROUP_COLUMNS)
    records = [(*(row.group[k] for k in keys), *attrgetter(*GROUP_COLUMNS)(row)) for row in group_rows]
    if fmt == "csv":
        body = _csv(columns, records)
    else:
        body = "".join(json.dumps(dict(zip(columns, r))) + "\n" for r in records)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


def _csv(columns: tuple[str, ...], records: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    # None becomes an empty cell, which pandas reads as NaN; floats print as round-tripping repr.
    writer.writerows(records)
    return out.getvalue()


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
