"""DELETE /v1/experiments/{id}: every row and checkpoint of the experiment goes, nothing else does;
404 across owners and the second time, 409 while a worker holds a lease or a fork elsewhere
needs its runs. The test plays the worker (a claim, points, checkpoints) on apps without one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import NamedTuple

import httpx
import pytest
from sqlalchemy import func, select

from groklab.settings import Settings
from groklab.store import leases
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from groklab.store.models import (
    CheckpointChunk,
    CheckpointRecord,
    Experiment,
    IdempotencyKey,
    MetricPoint,
    MetricRollup,
    MetricSeries,
    Run,
    RunEvent,
)
from groklab.store.runs import CANCELLED, SUCCEEDED
from tests.services import Stack, bearer, create_key, tiny_spec


class App(NamedTuple):
    http: httpx.Client  # as one owner
    database_url: str
    dialect: str


@pytest.fixture(params=["postgresql", "sqlite"])
def app(request: pytest.FixtureRequest) -> Iterator[App]:
    """An api without workers: on PostgreSQL with keys required, on SQLite as embedded (auth off)."""
    if request.param == "postgresql":
        stack: Stack = request.getfixturevalue("auth_stack")
        url = stack.env["GROKLAB_DATABASE_URL"]
        headers = bearer(create_key(url, f"del-{uuid.uuid4().hex[:8]}"))
    else:
        stack, url = request.getfixturevalue("sqlite_api_stack")
        headers = {}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as http:
        yield App(http, url, request.param)


def submit(app: App, **spec_overrides: object) -> dict:  # type: ignore[type-arg]
    response = app.http.post(
        "/v1/experiments",
        json=tiny_spec(seeds=[0, 1], **spec_overrides),
        headers={"Idempotency-Key": f"del-{uuid.uuid4().hex}"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def start(app: App, run_id: int, *, steps: int = 40) -> leases.Lease:
    """Claim the run as a worker would, log points and store two checkpoints of it."""
    with session_scope(app.database_url) as session:
        lease = leases.claim_run(session, run_id, worker="test@deleting", lease_seconds=600)
    assert lease is not None
    with session_scope(app.database_url) as session:
        points = [(name, step, 0.5) for name in ("train_loss", "test_acc") for step in range(steps)]
        write_points(session, run_id, points, step=steps)
    store = CheckpointStore.from_settings(Settings(database_url=app.database_url))
    store.put(lease, 10, b"weights at 10")
    store.put(lease, 20, b"weights at 20" * 1000)
    return lease


def finish(app: App, lease: leases.Lease, status: str = SUCCEEDED) -> None:
    with session_scope(app.database_url) as session:
        assert leases.finish(session, lease, status=status)


def rows_of(app: App, experiment_id: int) -> dict[str, int]:
    """How many rows of each table belong to the experiment."""
    with session_scope(app.database_url) as session:
        runs = select(Run.id).where(Run.experiment_id == experiment_id)
        series = select(MetricSeries.id).where(MetricSeries.run_id.in_(runs))
        blobs = select(CheckpointRecord.blob_key).where(CheckpointRecord.run_id.in_(runs))

        def count(model: type, *where: object) -> int:
            return session.scalar(select(func.count()).select_from(model).where(*where)) or 0

        return {
            "experiments": count(Experiment, Experiment.id == experiment_id),
            "runs": count(Run, Run.experiment_id == experiment_id),
            "run_events": count(RunEvent, RunEvent.run_id.in_(runs)),
            "metric_series": count(MetricSeries, MetricSeries.id.in_(series)),
            "metric_points": count(MetricPoint, MetricPoint.series_id.in_(series)),
            "metric_rollups": count(MetricRollup, MetricRollup.series_id.in_(series)),
            "checkpoints": count(CheckpointRecord, CheckpointRecord.run_id.in_(runs)),
            "checkpoint_chunks": count(CheckpointChunk, CheckpointChunk.blob_key.in_(blobs)),
            "idempotency_keys": count(IdempotencyKey, IdempotencyKey.experiment_id == experiment_id),
        }


def chunks_of(app: App, experiment_id: int) -> int:
    with session_scope(app.database_url) as session:
        keys = [f"runs/{run_id}/" for run_id in session.scalars(select(Run.id).where(Run.experiment_id == experiment_id))]
        return sum(session.scalar(select(func.count()).where(CheckpointChunk.blob_key.startswith(key))) or 0 for key in keys)


def test_delete_removes_every_row_and_checkpoint_of_the_experiment_and_nothing_else(app: App) -> None:
    doomed, kept = submit(app), submit(app)
    for experiment in (doomed, kept):
        finish(app, start(app, experiment["run_ids"][0]))  # run 0 trained, run 1 still queued
    before, kept_before = rows_of(app, doomed["id"]), rows_of(app, kept["id"])
    assert all(n > 0 for table, n in before.items() if table != "metric_rollups" or app.dialect == "postgresql")
    doomed_chunks = chunks_of(app, doomed["id"])
    assert doomed_chunks > 0

    response = app.http.delete(f"/v1/experiments/{doomed['id']}")
    assert response.status_code == 204, response.text

    assert rows_of(app, doomed["id"]) == dict.fromkeys(before, 0)
    # Blobs by key too: after the index rows went, only their keys name them.
    assert chunks_of(app, doomed["id"]) == 0
    assert rows_of(app, kept["id"]) == kept_before
    assert app.http.get(f"/v1/experiments/{kept['id']}").status_code == 200
    for run_id in doomed["run_ids"]:
        assert app.http.get(f"/v1/runs/{run_id}").status_code == 404
    again = app.http.delete(f"/v1/experiments/{doomed['id']}")
    assert again.status_code == 404 and again.headers["content-type"].startswith("application/problem+json")
    assert app.http.get(f"/v1/experiments/{doomed['id']}").status_code == 404


def test_delete_while_a_worker_holds_a_lease_is_409_naming_the_run_and_cancels_the_rest(app: App) -> None:
    experiment = submit(app)
    running, queued = experiment["run_ids"]
    lease = start(app, running)

    refused = app.http.delete(f"/v1/experiments/{experiment['id']}")
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert f"runs {running} are running" in problem["detail"]
    assert problem["errors"][0]["field"] == "experiment_id"
    assert refused.headers["retry-after"] == "2"
    runs = {r["id"]: r for r in app.http.get(f"/v1/experiments/{experiment['id']}").json()["runs"]}
    assert runs[queued]["status"] == CANCELLED
    assert runs[running]["status"] == "running" and runs[running]["cancel_requested"]
    assert rows_of(app, experiment["id"])["metric_points"] > 0  # nothing deleted yet

    finish(app, lease, CANCELLED)  # the worker saw the cancel and stopped
    assert app.http.delete(f"/v1/experiments/{experiment['id']}").status_code == 204
    assert set(rows_of(app, experiment["id"]).values()) == {0}


def test_a_deleted_experiments_idempotency_key_is_forgotten(app: App) -> None:
    key = {"Idempotency-Key": f"del-key-{uuid.uuid4().hex}"}
    first = app.http.post("/v1/experiments", json=tiny_spec(), headers=key).json()
    assert app.http.delete(f"/v1/experiments/{first['id']}").status_code == 204
    again = app.http.post("/v1/experiments", json=tiny_spec(), headers=key)
    assert again.status_code == 201, again.text
    # A new experiment, not a replay (SQLite may give it the deleted one's id).
    assert "idempotent-replayed" not in again.headers and again.json()["created_at"] != first["created_at"]


def test_delete_of_a_parent_refuses_while_a_fork_in_another_experiment_needs_it(app: App) -> None:
    parent = submit(app)
    parent_run = parent["run_ids"][0]
    finish(app, start(app, parent_run))
    child = app.http.post(
        "/v1/experiments",
        json={"kind": "ungrokking", "phase1_run_id": parent_run, "subset_sizes": [30], "phase2_steps": 50},
    )
    assert child.status_code == 201, child.text
    refused = app.http.delete(f"/v1/experiments/{parent['id']}")
    assert refused.status_code == 409 and f"experiment(s) {child.json()['id']}" in refused.json()["detail"]
    assert rows_of(app, parent["id"])["runs"] == 2  # refused with nothing cancelled or deleted
    assert {r["status"] for r in app.http.get(f"/v1/experiments/{parent['id']}").json()["runs"]} == {SUCCEEDED, "queued"}

    # Once the fork finished (here: cancelled) it keeps its own rows and loses only its link.
    for run_id in child.json()["run_ids"]:
        assert app.http.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    deleted = app.http.delete(f"/v1/experiments/{parent['id']}")
    assert deleted.status_code == 204, deleted.text
    fork = app.http.get(f"/v1/runs/{child.json()['run_ids'][0]}").json()
    assert fork["parent_run_id"] is None and fork["status"] == CANCELLED


def test_another_owners_experiment_is_404_and_stays(auth_stack: Stack) -> None:
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    alice, bob = (bearer(create_key(url, f"del-{name}-{uuid.uuid4().hex[:8]}")) for name in ("alice", "bob"))
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as http:
        experiment = http.post("/v1/experiments", json=tiny_spec(), headers=alice).json()
        response = http.delete(f"/v1/experiments/{experiment['id']}", headers=bob)
        assert response.status_code == 404, response.text
        assert response.json()["errors"][0]["field"] == "experiment_id"
        assert http.get(f"/v1/experiments/{experiment['id']}", headers=alice).json()["status_counts"] == {"queued": 1}
        assert http.delete(f"/v1/experiments/{experiment['id']}").status_code == 401
        read_only = bearer(create_key(url, f"del-ro-{uuid.uuid4().hex[:8]}", scopes="read"))
        assert http.delete(f"/v1/experiments/{experiment['id']}", headers=read_only).status_code == 403


@pytest.mark.parametrize("bad", ["abc", "1.5", "-"])
def test_a_non_integer_id_is_422_naming_the_field(sqlite_api_stack: tuple[Stack, str], bad: str) -> None:
    stack, _ = sqlite_api_stack
    response = httpx.delete(f"{stack.base_url}/v1/experiments/{bad}", timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "experiment_id"
