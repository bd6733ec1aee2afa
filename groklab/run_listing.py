"""GET /v1/runs beyond ids: runs filtered by spec fields and labels and sorted by any column, a
page at a time with a keyset cursor.

Status, experiment and tags narrow the runs in SQL; spec fields, labels and sorting are applied
here, over at most `max_listed_runs` runs, because JSON comparison differs between PostgreSQL and
SQLite and labels come from each run's series. `where` means what it means in the metric query
(store.metric_reads.spec_matches).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from engine.spec import spec_path_error
from groklab.errors import InvalidInput
from groklab.run_labels import run_labels
from groklab.store import runs as run_store
from groklab.store.metric_reads import LABEL, spec_matches, spec_value, value_order
from groklab.store.models import Run

LABELS = (
    "not_converged", "kept", "partially_ungrokked", "ungrokked",
    "generalised_without_delay", "grokked", "semi_grokked", "memorised",
)  # fmt: skip
"""Every label groklab.analysis.label_run gives."""

SORT_COLUMNS = (
    "id experiment_id index status role step total_steps created_at started_at finished_at attempts "
    "search_round stopped_early_at_step parent_run_id"
).split()
"""Run-table columns a listing sorts by; also `label`, `final_<series>` (its latest value, e.g.
final_test_acc) and `spec.<dotted path>`."""


@dataclass(frozen=True)
class RunListing:
    runs: list[Run]
    next_cursor: str | None


def list_runs(
    session: Session,
    *,
    owner: str | None,
    experiment_id: int | None,
    statuses: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    labels: Sequence[str] | None,
    tags: Sequence[str],
    sort: str | None,
    limit: int,
    cursor: str | None,
    max_listed_runs: int,
    cache_bytes: int,
) -> RunListing:
    sort_value, descending = sort_key(sort)
    _check_filters(where, labels)
    if not where and not labels and sort_value is None:
        # Id order needs nothing but SQL: the listing stays unbounded, a page at a time.
        after_id = _id_cursor(cursor)
        runs = run_store.list_runs(
            session, experiment_id=experiment_id, statuses=statuses, limit=limit, after_id=after_id,
            owner=owner, tags=tags,
        )  # fmt: skip
        return RunListing(runs, str(runs[-1].id) if len(runs) == limit else None)
    runs = run_store.list_runs(
        session, experiment_id=experiment_id, statuses=statuses, limit=max_listed_runs + 1, after_id=None,
        owner=owner, tags=tags,
    )  # fmt: skip
    if len(runs) > max_listed_runs:
        raise InvalidInput(
            f"filtering or sorting reads at most {max_listed_runs} runs; narrow the listing with experiment_id, status or tag",
            field="experiment_id",
        )
    if where:
        runs = [run for run in runs if spec_matches(run.spec, where)]
    run_label: dict[int, str | None] = {}
    if labels or sort == LABEL or sort == f"-{LABEL}":
        run_label = run_labels(session, runs, cache_bytes=cache_bytes)
    if labels:
        runs = [run for run in runs if run_label[run.id] in labels]
    value = sort_value or (lambda run: run.id)

    def key(run: Run) -> Any:
        return _order_key(_plain(value(run) if value is not _LABEL_VALUE else run_label[run.id]), run.id, descending)

    runs.sort(key=key)
    if cursor is not None:
        after = _decode(cursor)
        after_key = _order_key(after[0], after[1], descending)
        runs = [run for run in runs if key(run) > after_key]
    page = runs[:limit]
    next_cursor = None
    if len(runs) > limit:
        last = page[-1]
        last_value = _plain(value(last) if value is not _LABEL_VALUE else run_label[last.id])
        next_cursor = _encode([last_value, last.id])
    return RunListing(page, next_cursor)


def _check_filters(where: Mapping[str, Any] | None, labels: Sequence[str] | None) -> None:
    for path in where or {}:
        problem = spec_path_error(path)
        if problem:
            raise InvalidInput(f"where {path}: {problem}", field="where")
    for label in labels or ():
        if label not in LABELS:
            raise InvalidInput(f"unknown label {label!r}; one of {', '.join(LABELS)}", field="label")


def sort_key(sort: str | None) -> tuple[Callable[[Run], Any] | None, bool]:
    """(the run's value to sort by, descending) of a `sort` parameter; (None, False) is id order."""
    if not sort or sort == "id":
        return None, False
    descending = sort.startswith("-")
    name = sort.removeprefix("-")
    if name in SORT_COLUMNS:
        return (lambda run: getattr(run, name)), descending
    if name == LABEL:
        return _LABEL_VALUE, descending
    if name.startswith("final_") and len(name) > len("final_"):
        series = name.removeprefix("final_")
        return (lambda run: ((run.latest_metrics or {}).get(series) or [None, None])[1]), descending
    if name.startswith("spec."):
        problem = spec_path_error(name.removeprefix("spec."))
        if problem is None:
            return (lambda run: spec_value(run.spec, name.removeprefix("spec."))), descending
        raise InvalidInput(f"sort {name}: {problem}", field="sort")
    raise InvalidInput(
        f"cannot sort by {name!r}: one of {', '.join(SORT_COLUMNS)}, label, final_<series> or spec.<path>, with - for descending",
        field="sort",
    )


def _LABEL_VALUE(run: Run) -> Any:  # a marker: the label is looked up, not computed
    return None


def _plain(value: Any) -> Any:
    """A JSON value that orders like `value`: datetimes as seconds."""
    return value.timestamp() if isinstance(value, datetime) else value


@functools.total_ordering
class _Reversed:
    def __init__(self, order: tuple[Any, ...]):
        self.order = order

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.order == other.order

    def __lt__(self, other: _Reversed) -> bool:
        return other.order < self.order


def _order_key(value: Any, run_id: int, descending: bool) -> tuple[Any, ...]:
    """Ascending or descending by value, nulls last either way, ties by id."""
    if not descending:
        return (value_order(value), run_id)
    return (value is None, _Reversed(value_order(value)), run_id)


def _encode(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[Any, int]:
    try:
        value, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(run_id, int):
            raise TypeError(run_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("not a next_cursor of this listing's sort", field="cursor") from exc
    return value, run_id


def _id_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or int(cursor) > run_store.MAX_ID:
        raise InvalidInput("not a next_cursor of this listing (sorted by id)", field="cursor")
    return int(cursor)
