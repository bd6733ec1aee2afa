"""Runs stored as a worker leaves them, without training: what the api and page tests read.

Each run is claimed in the transaction that creates it. A stack that shares the database has a
reconciler that re-sends queued runs nobody sent, and its worker would take a run the test had
created but not yet claimed (on a loaded machine, within the few seconds a test spends writing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from groklab.store.models import LOCAL_OWNER, Run

Points = Iterable[tuple[str, int, float]]


def points_of(series: Mapping[str, Mapping[int, float]]) -> list[tuple[str, int, float]]:
    """{name: {step: value}} as the (name, step, value) points a worker writes."""
    return [(name, step, value) for name, values in series.items() for step, value in values.items()]


def claim_new(session: Session, runs: Sequence[Run], *, worker: str = "recorded") -> list[leases.Lease]:
    """Leases on runs this session has just added, taken before it commits them."""
    session.flush()
    held = [leases.claim_run(session, run.id, worker=worker, lease_seconds=600) for run in runs]
    assert all(lease is not None for lease in held)
    return held  # type: ignore[return-value]


def record(url: str, lease: leases.Lease, points: Points, *, status: str | None = run_store.SUCCEEDED) -> None:
    """What a worker does with a claimed run: write its points, then finish it (unless status is None)."""
    with session_scope(url) as session:
        write_points(session, lease.run_id, list(points))
        if status is not None:
            leases.finish(session, lease, status=status)


def record_experiment(
    url: str,
    runs: Sequence[run_store.NewRun],
    points: Sequence[Points],
    *,
    name: str = "recorded",
    kind: str = "sweep",
    spec: dict[str, Any] | None = None,
    owner: str = LOCAL_OWNER,
    status: str | None = run_store.SUCCEEDED,
) -> tuple[int, list[int]]:
    """An experiment whose runs logged `points` (one iterable per run) and ended with `status`;
    its id and its runs' ids."""
    with session_scope(url) as session:
        experiment = run_store.create_experiment(session, name=name, kind=kind, spec=spec or {}, runs=runs, owner=owner)
        held = claim_new(session, experiment.runs)
        experiment_id = experiment.id
    for lease, logged in zip(held, points, strict=True):
        record(url, lease, logged, status=status)
    return experiment_id, [lease.run_id for lease in held]
