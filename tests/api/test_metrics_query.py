"""/v1/metrics/query over the real stack: layouts, formats, pagination, caching and bad input."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import httpx

from sqlalchemy import update

from groklab.metric_answers import MetricQuery
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.models import Run
from tests.recorded import points_of, record_experiment
from tests.api.conftest import Backend
from tests.services import tiny_spec


def _runs_with_points(
    url: str, points: dict[str, dict[int, float]], *, count: int = 1, finish: bool = True, spec: Any = None
) -> tuple[int, list[int]]:
    """An experiment of `count` runs that logged `points`, succeeded (or still running)."""
    logged = points_of(points)
    return record_experiment(
        url, [run_store.NewRun(spec=spec or tiny_spec(), total_steps=1)] * count, [logged] * count, name="q",
        status=run_store.SUCCEEDED if finish else None,
    )  # fmt: skip


def test_csv_round_trips_to_the_stored_numbers(backend: Backend) -> None:
    client, database_url = backend
    values = {0: 0.1, 1: 1 / 3, 2: -2.5e-300, 3: 1.7976931348623157e308, 4: math.nan, 5: 5e-324}
    _, [run_id] = _runs_with_points(database_url, {"loss": values})
    response = client.get("/v1/metrics/query", params={"run_ids": str(run_id), "format": "csv"})
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["run_id"]) for r in rows] == [run_id] * 6
    got = {int(r["step"]): (float(r["value"]) if r["value"] else None) for r in rows}
    assert got == {s: (v if math.isfinite(v) else None) for s, v in values.items()}


def test_buckets_in_every_format_carry_the_same_numbers(backend: Backend) -> None:
    client, database_url = backend
    _, run_ids = _runs_with_points(database_url, {"loss": {s: 1 / (s + 1) for s in range(100)}, "acc": {0: 0.5}}, count=2)
    body = {"run_ids": run_ids, "names": ["loss", "nope"], "max_points": 7}
    as_json = client.post("/v1/metrics/query", json=body).json()
    assert as_json["mode"] == "buckets" and as_json["bucket_width"] == 15 and as_json["end_step"] == 99
    assert {(r["run_id"], r["name"]) for r in as_json["rows"]} == {(i, "loss") for i in run_ids}
    assert len(as_json["rows"]) == 14
    ndjson = client.post("/v1/metrics/query", json=body, headers={"Accept": "application/x-ndjson"})
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in ndjson.text.splitlines()] == as_json["rows"]
    as_csv = client.post("/v1/metrics/query", json={**body, "format": "csv"})
    parsed = [
        {k: (v if k == "name" else (float(v) if "." in v or "e" in v else int(v))) for k, v in r.items()}
        for r in csv.DictReader(io.StringIO(as_csv.text))
    ]
    assert parsed == as_json["rows"]


def test_experiment_filter_by_status_and_spec_fields(backend: Backend) -> None:
    client, database_url = backend
    spec = {"task": {"train_size": 1000}, "optimizer": {"weight_decay": 1.0}}
    experiment_id, run_ids = _runs_with_points(database_url, {"loss": {0: 1.0}}, count=2, spec=spec)
    query = {"experiment_id": experiment_id, "status": ["succeeded"], "max_points": 10}
    match = client.post("/v1/metrics/query", json={**query, "where": {"task.train_size": 1000.0}})
    assert {r["run_id"] for r in match.json()["rows"]} == set(run_ids)
    other = client.get(
        "/v1/metrics/query",
        params={"experiment_id": experiment_id, "where": json.dumps({"optimizer.weight_decay": 0.1})},
    )
    assert other.json()["rows"] == []
    queued = client.post("/v1/metrics/query", json={**query, "status": ["queued"]})
    assert queued.json()["rows"] == []


def test_raw_points_page_through_every_point_once(backend: Backend) -> None:
    client, database_url = backend
    _, run_ids = _runs_with_points(database_url, {"a": {s: s for s in range(25)}, "b": {3: 3.0}}, count=2)
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"run_ids": ",".join(map(str, run_ids)), "limit": 7, "start_step": 1}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/metrics/query", params=params).json()
        assert page["mode"] == "points" and len(page["rows"]) <= 7
        seen += [(r["run_id"], r["name"], r["step"]) for r in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = [(i, n, s) for i in run_ids for n, steps in (("a", range(1, 25)), ("b", [3])) for s in steps]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


def test_large_answers_are_gzipped(backend: Backend) -> None:
    client, database_url = backend
    _, [run_id] = _runs_with_points(database_url, {"loss": {s: s / 7 for s in range(3000)}})
    response = client.post("/v1/metrics/query", json={"run_ids": [run_id]}, headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    # httpx decompresses: the bytes on the wire are the (smaller) content-length.
    assert int(response.headers["content-length"]) < len(response.content) / 3
    assert len(response.json()["rows"]) == 3000


def test_finished_runs_get_an_etag_and_304_but_running_ones_do_not(backend: Backend) -> None:
    client, database_url = backend
    _, [done] = _runs_with_points(database_url, {"loss": {0: 1.0}})
    _, [running] = _runs_with_points(database_url, {"loss": {0: 1.0}}, finish=False)
    try:
        _assert_etags(client, done, running)
    finally:
        # Left running, its lease would expire mid-suite and the stack's worker would train it.
        with session_scope(database_url) as session:
            session.execute(update(Run).where(Run.id == running).values(status=run_store.CANCELLED, lease_expires_at=None))


def _assert_etags(client: httpx.Client, done: int, running: int) -> None:
    first = client.post("/v1/metrics/query", json={"run_ids": [done], "max_points": 5})
    etag = first.headers["etag"]
    again = client.post("/v1/metrics/query", json={"run_ids": [done], "max_points": 5}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other_query = client.post("/v1/metrics/query", json={"run_ids": [done], "max_points": 6}, headers={"If-None-Match": etag})
    assert other_query.status_code == 200 and other_query.headers["etag"] != etag
    live = client.post("/v1/metrics/query", json={"run_ids": [done, running], "max_points": 5})
    assert live.status_code == 200 and "etag" not in live.headers


def _problem_field(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["errors"][0]["field"]


def test_bad_queries_are_problems_naming_the_field(backend: Backend) -> None:
    client, database_url = backend
    _, [run_id] = _runs_with_points(database_url, {"loss": {0: 1.0}})
    cases = [
        ({"run_ids": [run_id, 10**9]}, 404, "run_ids"),
        ({"experiment_id": 10**9}, 404, "experiment_id"),
        ({"run_ids": [run_id], "max_points": 0}, 422, "max_points"),
        ({"run_ids": [run_id], "max_points": 10_001}, 422, "max_points"),
        ({"run_ids": [run_id], "start_step": 10, "end_step": 9}, 422, "end_step"),
        ({"run_ids": list(range(1, 1002))}, 422, "run_ids"),
        ({"names": ["loss"]}, 422, "run_ids"),
        ({"run_ids": [run_id], "cursor": "x"}, 422, "cursor"),
        ({"run_ids": [run_id], "limit": 100_001}, 422, "limit"),
    ]
    for body, status, field in cases:
        response = client.post("/v1/metrics/query", json=body)
        assert (response.status_code, _problem_field(response)) == (status, field), body
    get = client.get("/v1/metrics/query", params={"run_ids": f"{run_id}", "max_points": "-1"})
    assert (get.status_code, _problem_field(get)) == (422, "max_points")
    bad_where = client.get("/v1/metrics/query", params={"run_ids": f"{run_id}", "where": "{"})
    assert (bad_where.status_code, _problem_field(bad_where)) == (422, "where")
    unknown_name = client.post("/v1/metrics/query", json={"run_ids": [run_id], "names": ["nope"]})
    assert unknown_name.status_code == 200 and unknown_name.json()["rows"] == []


def test_openapi_declares_every_get_query_parameter(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/metrics/query"]["get"]
    parameters = operation.get("parameters", [])
    assert sorted(p["name"] for p in parameters) == sorted(MetricQuery.model_fields)
    for parameter in parameters:
        assert parameter["in"] == "query" and parameter["required"] is False, parameter
        assert parameter["description"] and parameter["schema"]["type"] in ("string", "integer"), parameter
    by_name = {p["name"]: p for p in parameters}
    assert "Comma-separated" in by_name["run_ids"]["description"]
    assert by_name["where"]["schema"]["type"] == "string" and "JSON" in by_name["where"]["description"]
    assert by_name["max_points"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 10_000}
