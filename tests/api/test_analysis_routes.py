"""The analysis routes serve a finished experiment's analysis as JSON or CSV, and 404/422 problems."""

from __future__ import annotations

import time

import httpx
import jsonschema
from sqlalchemy import func, select

from groklab.store.database import session_scope
from groklab.store.models import CachedAnswer
from tests.services import tiny_spec, wait_for_runs


def _kept_analyses(database_url: str, run_ids: list[int]) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(CachedAnswer).where(CachedAnswer.run_id.in_(run_ids)))


def _response_schema(openapi: dict, path: str) -> dict:
    """The 200 JSON response's schema of GET `path`, with the components its $refs point into."""
    schema = openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return {**schema, "components": openapi["components"]}


def test_the_analyses_are_typed_and_documented_in_the_openapi_schema(client: httpx.Client):
    openapi = client.get("/openapi.json").json()
    for path, model in (
        ("/v1/runs/{run_id}/analysis", "RunAnalysisResponse"),
        ("/v1/experiments/{experiment_id}/analysis", "ExperimentAnalysis"),
    ):
        content = openapi["paths"][path]["get"]["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert "text/csv" in content
    experiment = openapi["components"]["schemas"]["ExperimentAnalysis"]
    assert {"accuracy_vs_train_size", "d_crit", "efficiency", "runs", "search", "method_comparison"} <= set(
        experiment["properties"]
    )
    # A kind's section is absent for the other kinds, so not required; the rest always is.
    assert "search" not in experiment["required"] and "efficiency" in experiment["required"]
    d_crit = experiment["properties"]["d_crit"]
    assert d_crit["description"] and d_crit["additionalProperties"] == {"$ref": "#/components/schemas/DCritByRole"}
    assert openapi["components"]["schemas"]["DCritSearch"]["properties"]["estimate"]["$ref"].endswith("/DCritEstimate")
    label = openapi["components"]["schemas"]["RunAnalysisResponse"]["properties"]["label"]
    assert "grokked" in label["enum"]


def test_run_and_experiment_analyses_of_finished_tiny_runs(client: httpx.Client, pg_database: str):
    spec = tiny_spec(seeds=[0, 1], sweep={"grid": {"task.train_fraction": [0.3, 0.6]}})
    experiment = client.post("/v1/experiments", json=spec).json()
    runs = wait_for_runs(client, experiment["run_ids"])
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    # The worker analysed each run as it finished, before anyone asked (the page's first open).
    deadline = time.monotonic() + 30
    while _kept_analyses(pg_database, experiment["run_ids"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kept_analyses(pg_database, experiment["run_ids"]) == 4

    run_id = experiment["run_ids"][0]
    run = client.get(f"/v1/runs/{run_id}/analysis")
    assert run.status_code == 200, run.text
    body = run.json()
    assert body["label"] in ("grokked", "semi_grokked", "memorised", "generalised_without_delay", "not_converged")
    assert body["final_step"] == 300 and body["final_param_norm"] > 0
    assert body["thresholds"]["generalised_acc"] == 0.95

    looser = client.get(f"/v1/runs/{run_id}/analysis", params={"memorised_acc": 0.01}).json()
    assert looser["memorisation_step"] == 0
    openapi = client.get("/openapi.json").json()
    jsonschema.validate(body, _response_schema(openapi, "/v1/runs/{run_id}/analysis"))

    analysis = client.get(f"/v1/experiments/{experiment['id']}/analysis")
    assert analysis.status_code == 200, analysis.text
    result = analysis.json()
    assert result["complete"] and result["analysed_runs"] == 4 and result["missing_run_ids"] == []
    sizes = {row["train_size"] for row in result["accuracy_vs_train_size"]}
    assert len(sizes) == 2 and all(row["n"] == 2 for row in result["accuracy_vs_train_size"])
    assert "pooled" in result["d_crit"]["run"]
    jsonschema.validate(result, _response_schema(openapi, "/v1/experiments/{experiment_id}/analysis"))
    assert "search" not in result and "method_comparison" not in result  # not this kind's sections

    table = client.get(f"/v1/experiments/{experiment['id']}/analysis", params={"format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    lines = table.text.splitlines()
    assert lines[0].startswith("id,index,status,role") and len(lines) == 5


def test_missing_ids_are_404_problems_and_bad_thresholds_422(client: httpx.Client):
    for path, field in (("/v1/runs/999999/analysis", "run_id"), ("/v1/experiments/999999/analysis", "experiment_id")):
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == field
    bad = client.get("/v1/runs/999999/analysis", params={"generalised_acc": 2})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "generalised_acc"
    inconsistent = client.get("/v1/runs/999999/analysis", params={"semi_min": 0.99})
    assert inconsistent.status_code == 422 and inconsistent.json()["errors"][0]["field"] == "semi_min"
