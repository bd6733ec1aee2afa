"""GET /v1/runs/{id}/metrics/stream: every point once across a reconnect, then an `end` event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from tests.recorded import claim_new
from tests.api.conftest import Backend


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def _write(url: str, run_id: int, points: list[tuple[str, int, float]]) -> None:
    with session_scope(url) as session:
        write_points(session, run_id, points)


def test_a_reconnect_with_last_event_id_delivers_every_point_exactly_once(backend: Backend) -> None:
    client, database_url = backend
    with session_scope(database_url) as session:
        experiment = run_store.create_experiment(session, name="s", spec={}, runs=[run_store.NewRun(spec={}, total_steps=10)])
        [lease] = claim_new(session, experiment.runs)
    run_id = lease.run_id
    _write(database_url, run_id, [(n, s, s + 0.5) for s in range(4) for n in ("loss", "acc")])
    # Step 4 arrives in two batches, as when the worker flushes between two logs of one step.
    _write(database_url, run_id, [("loss", 4, 4.5)])
    received: list[tuple[str, int, dict[str, Any]]] = []
    url = f"/v1/runs/{run_id}/metrics/stream"
    with client.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in _events(response):
            received.append((event["id"], event["event"], json.loads(event["data"])))
            if event["id"] == "3":
                break
    _write(database_url, run_id, [("acc", 4, 4.5)])
    _write(database_url, run_id, [(n, s, s + 0.5) for s in range(5, 10) for n in ("loss", "acc")])
    end = None
    with client.stream("GET", url, headers={"Last-Event-ID": "3"}, params={"after_step": 0}) as response:
        for event in _events(response):
            if event["event"] == "end":
                end = json.loads(event["data"])
                break
            received.append((event["id"], event["event"], json.loads(event["data"])))
            if event["id"] == "8":
                with session_scope(database_url) as session:
                    leases.finish(session, lease, status=run_store.SUCCEEDED)
    assert [int(event_id) for event_id, _, _ in received] == list(range(10))
    assert all(kind == "points" for _, kind, _ in received)
    assert [data["values"] for _, _, data in received] == [{"loss": s + 0.5, "acc": s + 0.5} for s in range(10)]
    assert end == {"run_id": run_id, "status": "succeeded", "step": 9}


def test_a_finished_run_streams_its_points_after_the_step_and_ends(backend: Backend) -> None:
    client, database_url = backend
    with session_scope(database_url) as session:
        experiment = run_store.create_experiment(session, name="s", spec={}, runs=[run_store.NewRun(spec={}, total_steps=3)])
        [lease] = claim_new(session, experiment.runs)
        run_id = lease.run_id
        write_points(session, run_id, [("loss", s, float(s)) for s in range(3)])
        leases.finish(session, lease, status=run_store.FAILED, error="test")
    with client.stream("GET", f"/v1/runs/{run_id}/metrics/stream", params={"after_step": 0}) as response:
        events = list(_events(response))
    assert [(e["event"], e.get("id")) for e in events] == [("points", "1"), ("points", "2"), ("end", None)]
    assert json.loads(events[-1]["data"])["status"] == "failed"


def test_stream_of_an_unknown_run_or_a_bad_last_event_id_is_a_problem(
    client: httpx.Client,
) -> None:
    missing = client.get("/v1/runs/999999999/metrics/stream")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "run_id"
    bad = client.get("/v1/runs/1/metrics/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Last-Event-ID"
