"""The metric query's answer: the runs it selects, its rows (points, buckets or groups), their JSON,
CSV and NDJSON bodies, and the answer cache that keeps a downsampled answer over finished runs.

The api serves it at /v1/metrics/query (api/routes/metric_query.py adds only HTTP: the Accept
header, ETags, gzip), and the worker computes the experiment page's first query into the cache
when an experiment's last run finishes (groklab/lifecycle/finish.py); both compute the key here,
so the page's first open reads what the worker kept.

The columns of every format are the fields, in order, of the store's row types (`PointRow`,
`Bucket`, `GroupRow`), the same types the OpenAPI document shows; nothing here lists them again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.orm import Session

from engine.spec import spec_path_error
from groklab import analysis, run_labels
from groklab.settings import Settings
from groklab.store import answer_cache, downsample, metric_reads
from groklab.store.downsample import Bucket
from groklab.store.metric_reads import LABEL, GroupRow, MetricRows, PointRow
from groklab.store.models import Run
from groklab.store.runs import RunStatus

MetricFormat = Literal["json", "csv", "ndjson"]


class MetricQuery(BaseModel):
    """Runs (by id, or an experiment filtered by status and spec fields) x series names x steps."""

    model_config = {"extra": "forbid"}

    run_ids: list[int] | None = Field(None, max_length=1000, description="At most 1,000 run ids.")
    experiment_id: int | None = Field(None, ge=1, description="All runs of this experiment.")
    status: list[RunStatus] | None = Field(None, description="Keep runs in these statuses only.")
    where: dict[str, str | int | float | bool | None] | None = Field(
        None,
        max_length=20,
        description="Dotted spec paths and the values runs must have, e.g. "
        '{"task.train_size": 1000, "optimizer.weight_decay": 1.0}.',
    )
    names: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="Series names; all when omitted. Unknown names give no rows."
    )
    start_step: int = Field(0, ge=0, description="First step, inclusive.")
    end_step: int | None = Field(None, ge=0, description="Inclusive; default the last step of the selected series.")
    max_points: int | None = Field(None, ge=1, le=10_000, description="Downsample each series to at most this many buckets.")
    limit: int = Field(10_000, ge=1, le=100_000, description="Raw points per page (no max_points).")
    cursor: str | None = Field(None, max_length=40, description="next_cursor of the previous page.")
    format: MetricFormat | None = Field(None, description="Overrides the Accept header.")
    group_by: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Dotted spec paths (or `label`, the run's analysis label) whose values group the "
        "runs; each group's buckets are folded across its runs (mean, min and max of the runs' "
        'bucket means, n runs). Needs max_points. E.g. ["task.train_size"].',
    )

    @model_validator(mode="after")
    def _coherent(self) -> MetricQuery:
        if self.run_ids is None and self.experiment_id is None:
            raise ValueError("run_ids: give run_ids or experiment_id")
        check_spec_paths("where", self.where or {})
        if self.group_by is not None:
            check_spec_paths("group_by", [path for path in self.group_by if path != LABEL])
            if self.max_points is None:
                raise ValueError("group_by: needs max_points (groups are folded bucket by bucket)")
        if self.end_step is not None and self.end_step < self.start_step:
            raise ValueError("end_step: is before start_step")
        if self.max_points is not None and self.cursor is not None:
            raise ValueError("cursor: downsampled queries return one page")
        return self


def check_spec_paths(field: str, paths: Any) -> None:
    """A ValueError naming `field` for the first path that names no RunSpec field."""
    for path in paths:
        problem = spec_path_error(path)
        if problem:
            raise ValueError(f"{field}: {problem}")


POINT_COLUMNS = tuple(field.name for field in dataclasses.fields(PointRow))
BUCKET_COLUMNS = tuple(field.name for field in dataclasses.fields(Bucket))
GROUP_COLUMNS = tuple(field.name for field in dataclasses.fields(GroupRow) if field.name != "group")
MEDIA_TYPES: dict[MetricFormat, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}


@dataclass(frozen=True)
class Answer:
    body: bytes
    gzipped: bool
    """The answer cache's gzip-compressed bytes (sent as they are to a client that accepts gzip)."""
    cache: Literal["hit", "miss"] | None
    """Whether it was read from the answer cache or computed and kept; None: not kept (raw pages,
    runs that have not finished, the cache off)."""
    next_cursor: str | None = None


def select_runs(session: Session, query: MetricQuery, owner: str) -> list[Run]:
    return metric_reads.select_runs(
        session,
        run_ids=query.run_ids,
        experiment_id=query.experiment_id,
        statuses=query.status,
        where=query.where,
        owner=owner,
    )


def answer(session: Session, settings: Settings, query: MetricQuery, fmt: MetricFormat, runs: list[Run], owner: str) -> Answer:
    """The query's answer in `fmt` over `runs` (select_runs). Finished runs never gain points, so a
    downsampled answer over them is kept and read back; raw points are read a page at a time."""
    cacheable = bool(runs) and metric_reads.all_finished(runs) and query.max_points is not None
    if not cacheable or settings.answer_cache_bytes == 0:
        rows = read_rows(session, settings, query, runs)
        return Answer(serialise(rows, fmt), gzipped=False, cache=None, next_cursor=rows.next_cursor)
    key = answer_key(query, fmt, runs, owner)
    stored = answer_cache.get_compressed(session, [key]).get(key)
    if stored is not None:
        return Answer(stored, gzipped=True, cache="hit")
    body = serialise(read_rows(session, settings, query, runs), fmt)
    entry = answer_cache.Entry(key, query.experiment_id or runs[0].experiment_id, None, body)
    return Answer(answer_cache.put_many(session, [entry], max_bytes=settings.answer_cache_bytes)[key], gzipped=True, cache="miss")


_CODE = answer_cache.code_digest(metric_reads, downsample, analysis, run_labels, sys.modules[__name__])


def answer_key(query: MetricQuery, fmt: MetricFormat, runs: Sequence[Run], owner: str) -> str:
    """The answer cache's key of the query's answer: the request (its format resolved), whose it
    is, every run's fingerprint and this code's digest."""
    fingerprints = [answer_cache.run_fingerprint(run) for run in runs]
    return answer_cache.answer_key("metric_query", _CODE, owner, query.model_dump(exclude={"format"}), fmt, fingerprints)


def read_rows(session: Session, settings: Settings, query: MetricQuery, runs: list[Run]) -> MetricRows:
    if query.group_by and query.max_points is not None:
        labels = run_labels.run_labels(session, runs, cache_bytes=settings.answer_cache_bytes) if LABEL in query.group_by else {}
        groups = metric_reads.group_runs(runs, query.group_by, labels, max_groups=settings.max_metric_groups)
        return metric_reads.read_group_metrics(
            session,
            groups,
            query.group_by,
            names=query.names,
            start_step=query.start_step,
            end_step=query.end_step,
            max_points=query.max_points,
            runs=runs,
        )
    return metric_reads.read_metrics(
        session,
        runs,
        names=query.names,
        start_step=query.start_step,
        end_step=query.end_step,
        max_points=query.max_points,
        cursor=query.cursor,
        limit=query.limit,
    )


def serialise(rows: MetricRows, fmt: MetricFormat) -> bytes:
    """The rows in `fmt`; JSON wraps them in MetricQueryOut's envelope, CSV and NDJSON carry the
    rows alone (the api sends the next cursor in the X-Next-Cursor header)."""
    if rows.group_rows is not None:
        return _groups(rows, fmt).encode()
    items: Sequence[Any]
    if rows.buckets is not None:
        items, columns = rows.buckets, BUCKET_COLUMNS
    else:
        items, columns = rows.points or [], POINT_COLUMNS
    records = [attrgetter(*columns)(item) for item in items]
    if fmt == "csv":
        return _csv(columns, records).encode()
    if fmt == "ndjson":
        return "".join(json.dumps(dict(zip(columns, r))) + "\n" for r in records).encode()
    envelope = {
        "mode": "buckets" if rows.buckets is not None else "points",
        "start_step": rows.start_step,
        "end_step": rows.end_step,
        "bucket_width": rows.bucket_width,
        "rows": [dict(zip(columns, r)) for r in records],
        "next_cursor": rows.next_cursor,
    }
    return json.dumps(envelope).encode()


def _groups(rows: MetricRows, fmt: MetricFormat) -> str:
    """Grouped rows: in CSV and NDJSON the group's values come first, one column per group_by path."""
    group_rows = rows.group_rows or []
    if fmt == "json":
        return json.dumps(
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
    keys = tuple(rows.group_by or ())
    columns = (*keys, *GROUP_COLUMNS)
    records = [(*(row.group[k] for k in keys), *attrgetter(*GROUP_COLUMNS)(row)) for row in group_rows]
    if fmt == "csv":
        return _csv(columns, records)
    return "".join(json.dumps(dict(zip(columns, r))) + "\n" for r in records)


def _csv(columns: tuple[str, ...], records: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    # None becomes an empty cell, which pandas reads as NaN; floats print as round-tripping repr.
    writer.writerows(records)
    return out.getvalue()
