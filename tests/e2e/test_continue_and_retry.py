"""Finished runs trained further on the production stack (PostgreSQL + Redis + a worker process):
a succeeded run continued with a new phase, an experiment's cancelled runs retried, each resumed
from its stored checkpoint, with the series of a run trained straight through."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.client.test_client_cli import groklab
from tests.faults.test_faults import undisturbed_series
from tests.services import Stack, tiny_spec, wait_for_runs, wait_until


def _series(client: httpx.Client, run_id: int) -> dict[str, dict[int, float]]:
    served = client.get(f"/v1/runs/{run_id}/metrics").json()["series"]
    return {name: {step: value for step, value in points} for name, points in served.items()}


def _assert_equal_series(
    served: dict[str, dict[int, float]], expected: dict[str, dict[int, float]], tolerance: float = 1e-6
) -> None:
    assert set(served) >= set(expected)
    for name, points in expected.items():
        assert sorted(served[name]) == sorted(points), name
        for step, value in points.items():
            assert served[name][step] == pytest.approx(value, rel=tolerance, abs=tolerance), (name, step)


def _messages(run: dict[str, Any]) -> str:
    return " | ".join(event["message"] or "" for event in run["events"])


def test_a_continued_run_resumes_from_its_final_checkpoint_and_equals_one_trained_straight(
    client: httpx.Client,
) -> None:
    spec = tiny_spec(phases=[{"steps": 300}])
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    assert wait_for_runs(client, [run_id], timeout=120)[run_id]["status"] == "succeeded"
    before = _series(client, run_id)

    response = client.post(f"/v1/runs/{run_id}/continue", json={"steps": 200, "weight_decay": 0.3})
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("queued", "running") and response.json()["total_steps"] == 500
    run = wait_for_runs(client, [run_id], timeout=120)[run_id]
    assert run["status"] == "succeeded" and run["step"] == 500
    assert run["spec"]["phases"][-1] == {**run["spec"]["phases"][-1], "steps": 200, "weight_decay": 0.3}
    assert "continued from step 300 for 200 more steps" in _messages(run)
    assert "resuming from the checkpoint at step 300" in _messages(run)

    after = _series(client, run_id)
    steps = sorted(after["test_acc"])
    assert steps == list(range(0, 501, 10))  # one point a step, no gap, none repeated
    assert {s: after["test_acc"][s] for s in before["test_acc"]} == before["test_acc"]
    straight = {**tiny_spec(), "phases": [{"steps": 300}, {"steps": 200, "weight_decay": 0.3}], "seeds": [0]}
    _assert_equal_series(after, undisturbed_series(straight))
    analysis = client.get(f"/v1/runs/{run_id}/analysis").json()
    assert analysis["final_step"] == 500 and analysis["weight_decay"] == 0.3


def test_continuing_a_run_that_is_not_succeeded_is_409_and_bad_bodies_are_4xx_naming_the_field(
    client: httpx.Client,
) -> None:
    long_run = client.post("/v1/experiments", json=tiny_spec(phases=[{"steps": 200_000}])).json()["run_ids"][0]
    try:
        refused = client.post(f"/v1/runs/{long_run}/continue", json={"steps": 10})
        assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "run_id", refused.text
    finally:
        client.post(f"/v1/runs/{long_run}/cancel")
    assert client.post("/v1/runs/99999999/continue", json={"steps": 10}).status_code == 404

    done = client.post("/v1/experiments", json=tiny_spec(phases=[{"steps": 20}])).json()["run_ids"][0]
    wait_for_runs(client, [done], timeout=120)
    for body, field in [
        ({"steps": 0}, "steps"),
        ({}, "steps"),
        ({"steps": 10, "subset_size": 500}, "subset_size"),  # D is 84 pairs
        ({"steps": 10, "stop_when": [{"metric": "accuracy", "at_least": 1}]}, "stop_when"),
        ({"steps": 10, "learning_rate": 1}, "learning_rate"),
    ]:
        response = client.post(f"/v1/runs/{done}/continue", json=body)
        assert response.status_code == 422, (body, response.text)
        assert any(field in error["field"] for error in response.json()["errors"]), (body, response.json())
    assert client.get(f"/v1/runs/{done}").json()["status"] == "succeeded"  # nothing changed


def test_retry_requeues_an_experiments_cancelled_runs_which_resume_and_finish(client: httpx.Client) -> None:
    # Two models that cannot share an ensemble: each trains alone, as its reference does.
    models = [{**tiny_spec()["model"], "d_mlp": width} for width in (64, 48)]
    spec = tiny_spec(phases=[{"steps": 1500}], sweep={"zip": {"model": models}})
    experiment = client.post("/v1/experiments", json=spec).json()
    first, second = experiment["run_ids"]
    # Cancelled part-way (the first, checkpointed as it stops) and while queued (the second).
    wait_until(lambda: client.get(f"/v1/runs/{first}").json()["step"] >= 400, timeout=120)
    for run_id in (first, second):
        client.post(f"/v1/runs/{run_id}/cancel")
    cancelled = wait_for_runs(client, [first, second], timeout=120)
    assert {run["status"] for run in cancelled.values()} == {"cancelled"}
    stopped_at = cancelled[first]["step"]

    response = client.post(f"/v1/experiments/{experiment['id']}/retry")
    assert response.status_code == 200, response.text
    assert {run["status"] for run in response.json()["runs"]} <= {"queued", "running"}
    runs = wait_for_runs(client, [first, second], timeout=180)
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    assert "retried (was cancelled" in _messages(runs[first]) and "retried (was cancelled" in _messages(runs[second])
    assert f"resuming from the checkpoint at step {stopped_at}" in _messages(runs[first])
    for run_id, model in ((first, models[0]), (second, models[1])):
        reference = {**tiny_spec(), "phases": [{"steps": 1500}], "model": model, "seeds": [0]}
        _assert_equal_series(_series(client, run_id), undisturbed_series(reference))

    again = client.post(f"/v1/experiments/{experiment['id']}/retry")
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "experiment_id"
    assert client.post("/v1/experiments/99999999/retry").status_code == 404


def test_cli_continue_and_retry(pg_stack: Stack, client: httpx.Client) -> None:
    run_id = client.post("/v1/experiments", json=tiny_spec(phases=[{"steps": 50}])).json()["run_ids"][0]
    wait_for_runs(client, [run_id], timeout=120)
    result = groklab("continue", str(run_id), "--steps", "30", url=pg_stack.base_url)
    assert result.returncode == 0, result.stderr
    assert f"run {run_id}:" in result.stderr and "now 80 steps" in result.stderr
    assert wait_for_runs(client, [run_id], timeout=120)[run_id]["step"] == 80

    experiment = client.get(f"/v1/runs/{run_id}").json()["experiment_id"]
    refused = groklab("retry", str(experiment), url=pg_stack.base_url)
    said = " ".join(refused.stderr.split())  # rich wraps long lines
    assert refused.returncode == 1 and "409" in said and "no failed or cancelled runs" in said
