"""`where` means one thing in GET /v1/runs and in the metric query (store.metric_reads.spec_matches):
a spec path the run lacks never matches, not even null; numbers equal by value (10 == 10.0); a
boolean equals only a boolean."""

from __future__ import annotations

import json
from typing import Any

import httpx

from engine.spec import RunSpec
from groklab.store import runs as run_store
from tests.recorded import record_experiment
from tests.api.conftest import Backend
from tests.services import tiny_spec


def _stored(**overrides: Any) -> dict[str, Any]:
    """A spec as submission stores it (every field, defaults expanded)."""
    return RunSpec.model_validate(tiny_spec(**overrides)).model_dump(mode="json")


def _experiment(url: str, specs: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """An experiment of finished runs with these specs, each with one point."""
    runs = [run_store.NewRun(spec=spec, total_steps=1) for spec in specs]
    return record_experiment(url, runs, [[("loss", 0, 1.0)]] * len(runs), name="where")


def test_where_has_one_meaning_at_the_edges_in_the_listing_and_the_metric_query(backend: Backend) -> None:
    client, database_url = backend
    task = tiny_spec()["task"]
    experiment_id, [short, long] = _experiment(
        database_url,
        [
            _stored(phases=[{"steps": 10}], task={**task, "random_labels": True}),
            _stored(phases=[{"steps": 10}, {"steps": 5}], task={**task, "data_seed": 1}),
        ],
    )
    cases = [
        ({"phases.1.subset_size": None}, {long}),  # the one-phase run lacks the path: no match
        ({"phases.1.steps": 5}, {long}),
        ({"phases.0.steps": 10.0}, {short, long}),  # numbers by value
        ({"task.random_labels": True}, {short}),
        ({"task.random_labels": 1}, set()),  # a boolean is not a number
        ({"task.random_labels": False}, {long}),
        ({"task.random_labels": 0}, set()),
        ({"task.data_seed": False}, set()),  # nor a number a boolean
        ({"task.data_seed": 1}, {long}),
    ]
    for where, expected in cases:
        assert _listed(client, experiment_id, where) == expected, where
        assert _queried(client, experiment_id, where) == expected, where


def _listed(client: httpx.Client, experiment_id: int, where: dict[str, Any]) -> set[int]:
    response = client.get("/v1/runs", params={"experiment_id": experiment_id, "where": json.dumps(where)})
    response.raise_for_status()
    return {run["id"] for run in response.json()["items"]}


def _queried(client: httpx.Client, experiment_id: int, where: dict[str, Any]) -> set[int]:
    response = client.post("/v1/metrics/query", json={"experiment_id": experiment_id, "where": where, "max_points": 10})
    response.raise_for_status()
    return {row["run_id"] for row in response.json()["rows"]}
