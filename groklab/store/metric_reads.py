"""Metric reads: one run's series, and across runs which runs and series a query means, raw pages
or downsampled buckets (groklab/store/downsample.py), and the new points to stream."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from psycopg.errors import QueryCanceled
from pydantic import Field
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from groklab.errors import GroklabError, InvalidInput, NotFound
from groklab.store import downsample
from groklab.store.downsample import Bucket, SeriesRef, bucket_width, downsample_buckets
from groklab.store.models import Experiment, MetricPoint, MetricSeries, Run
from groklab.store.runs import FINISHED_STATUSES, MAX_ID

MAX_RUNS = 1000
MAX_BUCKET_ROWS = 500_000
STATEMENT_TIMEOUT_MS = 15_000


class QueryTimeout(GroklabError):
    status_code = 503
    title = "Query timed out"


def _check_bucket_rows(lines: int, what: str, max_points: int) -> None:
    """A downsampled answer of `lines` series (or groups x names) of max_points buckets each is
    at most MAX_BUCKET_ROWS rows; more is a 422 on max_points."""
    if lines * max_points > MAX_BUCKET_ROWS:
        raise InvalidInput(f"{lines} {what} x {max_points} buckets exceeds {MAX_BUCKET_ROWS} rows", field="max_points")


@dataclass(frozen=True)
class PointRow:
    """One raw point; its fields, in order, are the columns of every format the api serves."""

    run_id: int
    name: str
    step: int
    value: Annotated[float | None, Field(description="null where the logged value was NaN or infinite.")]


@dataclass(frozen=True)
class GroupRow:
    """One bucket of one group of runs; `group`'s keys become columns of CSV and NDJSON."""

    group: Annotated[dict[str, Any], Field(description="The group's group_by values (null: the run lacks the field).")]
    name: str
    step_start: Annotated[int, Field(description="First step the bucket covers (inclusive).")]
    step_end: Annotated[int, Field(description="Last step the bucket covers (inclusive).")]
    n: Annotated[int, Field(description="Runs of the group with a value in this bucket.")]
    mean: Annotated[float | None, Field(description="Mean of those runs' bucket means.")]
    min: Annotated[float | None, Field(description="Least of those runs' bucket means (the band's low edge).")]
    max: Annotated[float | None, Field(description="Greatest of those runs' bucket means (the band's high edge).")]


@dataclass(frozen=True)
class RunGroup:
    group: dict[str, Any]
    run_ids: list[int]


@dataclass(frozen=True)
class MetricRows:
    """One answer to a metric query: raw points (with a cursor) or buckets over a resolved range."""

    start_step: int
    end_step: int | None
    bucket_width: int | None
    points: list[PointRow] | None = None
    buckets: list[Bucket] | None = None
    next_cursor: str | None = None
    group_by: list[str] | None = None
    groups: list[RunGroup] | None = None
    group_rows: list[GroupRow] | None = None


@contextmanager
def bounded(session: Session) -> Iterator[None]:
    """Cap every statement of the current transaction on PostgreSQL, so no query runs for minutes."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
    try:
        yield
    except OperationalError as exc:
        if isinstance(exc.orig, QueryCanceled):
            raise QueryTimeout(f"the query ran past {STATEMENT_TIMEOUT_MS // 1000} s; ask for fewer runs or steps") from exc
        raise


def _spec_value(spec: Mapping[str, Any], dotted: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def spec_value(spec: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of a run's spec ('phases.1.subset_size'); None where it has none."""
    value = _spec_value(spec, dotted)
    return None if value is _MISSING else value


def spec_matches(spec: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether the run's spec has every `where` value at its dotted path: the one meaning of
    `where` in the runs listing and the metric query. A path the spec lacks never matches (not
    even null); values are equal as JSON values, so 1000 == 1000.0 but a boolean equals only a
    boolean (true is not 1), also inside lists and objects."""
    return all(_json_equal(_spec_value(spec, path), value) for path, value in where.items())


def _json_equal(have: Any, want: Any) -> bool:
    if have is _MISSING:
        return False
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if isinstance(have, list) and isinstance(want, list):
        return len(have) == len(want) and all(map(_json_equal, have, want))
    if isinstance(have, Mapping) and isinstance(want, Mapping):
        return have.keys() == want.keys() and all(_json_equal(have[k], want[k]) for k in have)
    return have == want


def value_order(value: Any) -> tuple[Any, ...]:
    """A sort key over the mixed JSON values of spec fields and columns: numbers by size, then
    strings, then anything else by its JSON text; None last."""
    if value is None:
        return (3,)
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True))


_MISSING = object()


def select_runs(
    session: Session,
    *,
    run_ids: Sequence[int] | None,
    experiment_id: int | None,
    statuses: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    owner: str | None = None,
) -> list[Run]:
    """The runs a query names, oldest first: listed ids must all exist, filters narrow the set.

    `where` matches dotted paths of a run's expanded spec (`spec_matches`); it is
    applied here rather than in SQL because JSON comparison differs between the two databases,
    and an experiment holds a bounded number of runs. Another owner's runs count as missing.
    """
    query = select(Run).join(Experiment).order_by(Run.id)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    if run_ids is not None:
        possible = [run_id for run_id in run_ids if 0 < run_id <= MAX_ID]
        existing = set(session.scalars(query.with_only_columns(Run.id).where(Run.id.in_(possible))))
        missing = sorted(set(run_ids) - existing)
        if missing:
            raise NotFound(f"runs {missing[:20]} do not exist", field="run_ids")
        query = query.where(Run.id.in_(run_ids))
    if experiment_id is not None:
        experiment = session.get(Experiment, experiment_id) if experiment_id <= MAX_ID else None
        if experiment is None or (owner is not None and experiment.owner != owner):
            raise NotFound(f"experiment {experiment_id} does not exist", field="experiment_id")
        query = query.where(Run.experiment_id == experiment_id)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    runs = list(session.scalars(query))
    if where:
        runs = [run for run in runs if spec_matches(run.spec, where)]
    if len(runs) > MAX_RUNS:
        raise InvalidInput(f"the query selects more than {MAX_RUNS} runs", field="experiment_id")
    return runs


def all_finished(runs: Sequence[Run]) -> bool:
    return all(run.status in FINISHED_STATUSES for run in runs)


def select_series(session: Session, run_ids: Sequence[int], names: Sequence[str] | None) -> list[SeriesRef]:
    """The runs' series with these names (all when None), by run and name; unknown names are absent."""
    if not run_ids:
        return []
    query = (
        select(MetricSeries.id, MetricSeries.run_id, MetricSeries.name)
        .where(MetricSeries.run_id.in_(run_ids))
        .order_by(MetricSeries.run_id, MetricSeries.name)
    )
    if names is not None:
        query = query.where(MetricSeries.name.in_(names))
    return [SeriesRef(id=row.id, run_id=row.run_id, name=row.name) for row in session.execute(query)]


def last_step(session: Session, series: Sequence[SeriesRef]) -> int | None:
    """The highest step of any of the series: one index probe per series, all in one statement
    (a round trip each cost a 200-run query 400 of them)."""
    if not series:
        return None
    probe = select(func.max(MetricPoint.step)).where(MetricPoint.series_id == MetricSeries.id).scalar_subquery()
    return session.scalar(select(func.max(probe)).where(MetricSeries.id.in_([s.id for s in series])))


def encode_cursor(series_id: int, step: int) -> str:
    return f"{series_id}.{step}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    series_id, _, step = cursor.partition(".")
    if not (series_id.isdigit() and step.isdigit()):
        raise InvalidInput("not a next_cursor this api returned", field="cursor")
    return int(series_id), int(step)


def read_points_page(
    session: Session,
    series: Sequence[SeriesRef],
    *,
    start_step: int,
    end_step: int | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[PointRow], str | None]:
    """Up to `limit` raw points in (series, step) order after `cursor`, and the next cursor."""
    if not series:
        return [], None
    query = (
        select(MetricPoint.series_id, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.series_id.in_([s.id for s in series]), MetricPoint.step >= start_step)
        .order_by(MetricPoint.series_id, MetricPoint.step)
        .limit(limit)
    )
    if end_step is not None:
        query = query.where(MetricPoint.step <= end_step)
    if cursor is not None:
        after_series, after_step = decode_cursor(cursor)
        query = query.where(
            or_(
                MetricPoint.series_id > after_series,
                and_(MetricPoint.series_id == after_series, MetricPoint.step > after_step),
            )
        )
    by_id = {s.id: s for s in series}
    rows = session.execute(query).all()
    points = [PointRow(by_id[r.series_id].run_id, by_id[r.series_id].name, r.step, r.value) for r in rows]
    next_cursor = encode_cursor(rows[-1].series_id, rows[-1].step) if len(rows) == limit else None
    return points, next_cursor


def steps_after(
    session: Session, run_id: int, after_step: int, *, limit: int = 10_000
) -> tuple[str, list[tuple[int, dict[str, float | None]]]]:
    """The run's status and its complete steps after `after_step`: [(step, {name: value})].

    A step is complete once a later step has been written or the run has finished: the worker may
    write one step's series in two batches, and a streamed step is never sent again. The status is
    read before the points, so a finished status means every point is already visible.
    """
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        raise NotFound(f"run {run_id} does not exist", field="run_id")
    series = select_series(session, [run_id], None)
    names = {s.id: s.name for s in series}
    if not names:
        return status, []
    rows = session.execute(
        select(MetricPoint.series_id, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.series_id.in_(names), MetricPoint.step > after_step)
        .order_by(MetricPoint.step, MetricPoint.series_id)
        .limit(limit)
    ).all()
    if not rows:
        return status, []
    bounds = [rows[-1].step] if len(rows) == limit else []
    if status not in FINISHED_STATUSES:
        bounds.append(last_step(session, series) or 0)
    complete_below = min(bounds) if bounds else None
    steps: dict[int, dict[str, float | None]] = {}
    for row in rows:
        if complete_below is not None and row.step >= complete_below:
            break
        steps.setdefault(row.step, {})[names[row.series_id]] = row.value
    return status, sorted(steps.items())


def read_metrics(
    session: Session,
    runs: Sequence[Run],
    *,
    names: Sequence[str] | None,
    start_step: int,
    end_step: int | None,
    max_points: int | None,
    cursor: str | None,
    limit: int,
) -> MetricRows:
    """Raw points a page at a time, or each series downsampled to at most `max_points` buckets.

    Downsampled series share one range (end_step defaults to their last step), so the buckets of
    different runs line up.
    """
    with bounded(session):
        series = select_series(session, [run.id for run in runs], names)
        if max_points is None:
            points, next_cursor = read_points_page(
                session, series, start_step=start_step, end_step=end_step, cursor=cursor, limit=limit
            )
            return MetricRows(start_step, end_step, None, points=points, next_cursor=next_cursor)
        _check_bucket_rows(len(series), "series", max_points)
        if end_step is None:
            end_step = last_step(session, series)
            if end_step is None or end_step < start_step:
                return MetricRows(start_step, None, None, buckets=[])
        buckets = downsample_buckets(session, series, start_step=start_step, end_step=end_step, max_points=max_points)
        width = bucket_width(start_step, end_step, max_points)
        return MetricRows(start_step, end_step, width, buckets=buckets)


def read_series(
    session: Session,
    run_id: int,
    *,
    names: Sequence[str] | None,
    start_step: int | None,
    end_step: int | None,
) -> dict[str, list[list[float | int | None]]]:
    """{name: [[step, value], ...]} in step order; every requested name is present, maybe empty."""
    series_query = select(MetricSeries.id, MetricSeries.name).where(MetricSeries.run_id == run_id)
    if names:
        series_query = series_query.where(MetricSeries.name.in_(names))
    ids = {series_id: name for series_id, name in session.execute(series_query)}
    result: dict[str, list[list[float | int | None]]] = {name: [] for name in names or []}
    result.update({name: [] for name in ids.values()})
    if not ids:
        return result
    query = (
        select(MetricPoint.series_id, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.series_id.in_(ids))
        .order_by(MetricPoint.series_id, MetricPoint.step)
    )
    if start_step is not None:
        query = query.where(MetricPoint.step >= start_step)
    if end_step is not None:
        query = query.where(MetricPoint.step <= end_step)
    for series_id, step, value in session.execute(query):
        result[ids[series_id]].append([step, value])
    return result


LABEL = "label"
"""The group_by and sort key that means a run's analysis label rather than a spec field."""


def group_runs(
    runs: Sequence[Run], group_by: Sequence[str], labels: Mapping[int, str | None], *, max_groups: int
) -> list[RunGroup]:
    """The runs by their values at the group_by paths (LABEL: the run's label), groups in order of
    those values; more than `max_groups` groups is an error rather than an unbounded answer."""
    members: dict[str, RunGroup] = {}
    for run in runs:
        values = {path: labels.get(run.id) if path == LABEL else spec_value(run.spec, path) for path in group_by}
        key = json.dumps(list(values.values()), sort_keys=True)
        members.setdefault(key, RunGroup(values, [])).run_ids.append(run.id)
        if len(members) > max_groups:
            raise InvalidInput(
                f"group_by forms more than {max_groups} groups; group by fewer fields or select fewer runs",
                field="group_by",
            )
    return sorted(members.values(), key=lambda g: [value_order(v) for v in g.group.values()])


def _latest_step(runs: Sequence[Run], series: Sequence[SeriesRef]) -> int | None:
    """The highest step of the series from their runs' latest_metrics, which write_points keeps in
    the points' own transaction: no probe per series (200 runs x 6 series are 1,200 probes).
    None when a series has no latest value there (e.g. runs not given): then the probes decide."""
    latest = {run.id: run.latest_metrics or {} for run in runs}
    steps = [latest.get(s.run_id, {}).get(s.name) for s in series]
    if not steps or not all(steps):
        return None
    return max(point[0] for point in steps)


def read_group_metrics(
    session: Session,
    groups: Sequence[RunGroup],
    group_by: Sequence[str],
    *,
    names: Sequence[str] | None,
    start_step: int,
    end_step: int | None,
    max_points: int,
    runs: Sequence[Run] = (),
) -> MetricRows:
    """Each group's buckets of each series: mean, min and max of its runs' bucket means, and n.

    The series share one bucket grid (end_step defaults to their last step), so a bucket's runs
    cover the same steps; a run with no non-null value in a bucket does not count in it. The
    folding happens in the database: only groups x names x buckets rows come back.
    """
    group_of = {run_id: index for index, group in enumerate(groups) for run_id in group.run_ids}
    with bounded(session):
        series = select_series(session, list(group_of), names)
        combos: dict[tuple[int, str], int] = {}
        by_series = {s.id: combos.setdefault((group_of[s.run_id], s.name), len(combos)) for s in series}
        _check_bucket_rows(len(combos), "groups x names", max_points)
        if end_step is None:
            end_step = _latest_step(runs, series)
            if end_step is None:
                end_step = last_step(session, series)
        if end_step is None or end_step < start_step:
            return MetricRows(start_step, None, None, group_by=list(group_by), groups=list(groups), group_rows=[])
        rows = downsample.fold_group_means(session, by_series, start_step=start_step, end_step=end_step, max_points=max_points)
    width = bucket_width(start_step, end_step, max_points)
    combo_keys = list(combos)
    ordered = []
    for combo, bucket, n, mean, low, high in rows:
        group_index, name = combo_keys[combo]
        step_start = start_step + bucket * width
        row = GroupRow(groups[group_index].group, name, step_start, min(end_step, step_start + width - 1), n, mean, low, high)
        ordered.append(((group_index, name, step_start), row))
    # Groups in their order (by value), then series by name and buckets by step.
    group_rows = [row for _, row in sorted(ordered, key=lambda pair: pair[0])]
    return MetricRows(start_step, end_step, width, group_by=list(group_by), groups=list(groups), group_rows=group_rows)
