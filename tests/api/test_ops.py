"""Operations: the api's Prometheus exposition, a worker's counters, JSON logs with run ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services import (
    Stack,
    free_port,
    migrated_pg_database,
    redis_url,
    service_env,
    tiny_spec,
    wait_for_runs,
    wait_until,
)


def scrape(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def samples(family: Any, name: str | None = None) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in family.samples if name is None or s.name == name]


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def finished_run(client: httpx.Client) -> tuple[int, int]:
    experiment = client.post("/v1/experiments", json=tiny_spec()).json()
    run_id = experiment["run_ids"][0]
    wait_for_runs(client, [run_id])
    return experiment["id"], run_id


def test_api_metrics_expose_runs_by_status_queue_depth_and_latency_by_route_template(
    pg_stack: Stack, client: httpx.Client
) -> None:
    _, run_id = finished_run(client)
    assert client.get(f"/v1/runs/{run_id}").status_code == 200

    families = scrape(f"{pg_stack.base_url}/metrics")
    runs = {labels["status"]: value for labels, value in samples(families["groklab_runs"])}
    assert set(runs) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert runs["succeeded"] >= 1
    assert samples(families["groklab_queue_depth_runs"]) == [({}, runs["queued"])]
    assert samples(families["groklab_broker_queue_length"])[0][1] >= 0
    latency = families["groklab_http_request_duration_seconds"]
    counted = {
        (labels["method"], labels["route"], labels["status"])
        for labels, value in samples(latency, "groklab_http_request_duration_seconds_count")
        if value > 0
    }
    assert ("GET", "/v1/runs/{run_id}", "200") in counted
    assert ("POST", "/v1/experiments", "201") in counted
    assert not any(f"/v1/runs/{run_id}" == route for _, route, _ in counted)


def test_api_metrics_expose_its_garbage_collections_and_the_objects_frozen_at_start(
    pg_stack: Stack, client: httpx.Client
) -> None:
    assert client.get("/v1/experiments").status_code == 200
    families = scrape(f"{pg_stack.base_url}/metrics")
    pauses = {labels["generation"]: value for labels, value in samples(families["groklab_gc_pauses"])}
    seconds = {labels["generation"]: value for labels, value in samples(families["groklab_gc_pause_seconds"])}
    assert set(pauses) == set(seconds) == {"0", "1", "2"}
    assert pauses["2"] >= 1 and seconds["2"] > 0  # at least the collection before the freeze at start
    # What the api loaded at start (its modules, routes and schemas) is frozen: full collections
    # skip it (api/main.py).
    assert samples(families["groklab_gc_frozen_objects"])[0][1] > 50_000


def test_api_request_log_lines_are_json_with_the_run_id(pg_stack: Stack, client: httpx.Client) -> None:
    _, run_id = finished_run(client)
    client.get(f"/v1/runs/{run_id}/analysis")

    def logged() -> list[dict[str, Any]]:
        return [
            line for line in json_lines(pg_stack.log_dir / "api.log")
            if line.get("route") == "/v1/runs/{run_id}/analysis" and line["run_id"] == run_id
        ]  # fmt: skip

    line = wait_until(logged, timeout=10)[0]
    assert line["status"] == 200 and line["level"] == "INFO" and line["duration_ms"] >= 0


def test_worker_log_lines_are_json_with_run_and_experiment_ids(pg_stack: Stack, client: httpx.Client) -> None:
    experiment_id, run_id = finished_run(client)
    lines = [line for line in json_lines(pg_stack.log_dir / "worker-w1.log") if line["run_id"] == run_id]
    assert lines, pg_stack.logs()
    assert all(line["experiment_id"] == experiment_id for line in lines)
    assert any("succeeded" in line["message"] for line in lines)


@pytest.fixture
def metered_worker(tmp_path: Path) -> Iterator[Stack]:
    """An api and a worker of their own queue and database, the worker serving /metrics on a free port."""
    port = free_port()
    with migrated_pg_database() as database_url:
        env = service_env(database_url, redis_url(), tmp_path, GROKLAB_WORKER_METRICS_PORT=str(port))
        stack = Stack(env=env, log_dir=tmp_path)
        stack.start_worker("metered")
        stack.start_api()
        yield stack
        stack.stop()


def test_worker_exposes_steps_and_points_written_counters(metered_worker: Stack) -> None:
    port = metered_worker.env["GROKLAB_WORKER_METRICS_PORT"]
    with httpx.Client(base_url=metered_worker.base_url, timeout=30) as client:
        _, run_id = finished_run(client)
        series = client.get(f"/v1/runs/{run_id}/metrics").json()["series"]
    families = wait_until(lambda: _counted(f"http://127.0.0.1:{port}/metrics"), timeout=30)
    # The first progress report of a run is its baseline (a resumed run counts only new steps).
    assert 299 <= samples(families["groklab_run_steps"], "groklab_run_steps_total")[0][1] <= 300
    written = samples(families["groklab_metric_points_written"], "groklab_metric_points_written_total")
    assert written[0][1] == sum(len(points) for points in series.values())


def _counted(url: str) -> dict[str, Any] | None:
    try:
        families = scrape(url)
    except httpx.HTTPError:
        return None
    steps = samples(families["groklab_run_steps"], "groklab_run_steps_total")
    return families if steps and steps[0][1] > 0 else None
