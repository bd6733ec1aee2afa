"""End to end on the production topology: PostgreSQL + Redis + a real Celery worker + the api over HTTP."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import httpx
import redis
import torch

from groklab import metric_answers
from groklab.metric_answers import MetricQuery
from groklab.overlay_query import overlay_query
from groklab.settings import Settings
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.models import CachedAnswer
from tests.services import Stack, redis_url, tiny_spec, wait_for_runs, wait_until

LONG_STEPS = 900_000  # 90,001 evaluations at eval_every 10: under GROKLAB_MAX_POINTS_PER_RUN
ENSEMBLE_SIZE = 8  # pg_stack's GROKLAB_ENSEMBLE_SIZE


def test_sweep_trains_every_run_and_serves_its_metrics(client: httpx.Client, pg_stack: Stack) -> None:
    spec = {**tiny_spec(), "name": "e2e sweep", "sweep": {"zip": {"task.train_fraction": [0.5, 0.6, 0.7]}}}
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 201, response.text
    experiment = response.json()
    assert len(experiment["run_ids"]) == 3 and experiment["status_counts"] == {"queued": 3}

    runs = wait_for_runs(client, experiment["run_ids"])
    for run in runs.values():
        assert run["status"] == "succeeded", run
        assert run["step"] == run["total_steps"] == 300
        assert run["started_at"] and run["finished_at"] and run["worker"].startswith("w1@")
        assert run["created_at"] <= run["started_at"] <= run["finished_at"]
        assert run["latest_metrics"]["train_acc"] == 1.0
        assert [e["status"] for e in run["events"]] == ["queued", "running", "succeeded"]

        metrics = client.get(f"/v1/runs/{run['id']}/metrics", params={"names": "train_loss,test_acc,train_acc"})
        series = metrics.json()["series"]
        assert set(series) == {"train_loss", "test_acc", "train_acc"}
        steps = [step for step, _ in series["train_loss"]]
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 300
        assert max(value for _, value in series["train_acc"]) == 1.0
        assert series["train_loss"][-1][1] < series["train_loss"][0][1]

        window = client.get(f"/v1/runs/{run['id']}/metrics", params={"names": "train_acc", "start_step": 100, "end_step": 200})
        assert [s for s, _ in window.json()["series"]["train_acc"]] == list(range(100, 201, 10))

    # One worker trained the three as one batched ensemble: their training overlapped in time.
    assert max(r["started_at"] for r in runs.values()) < min(r["finished_at"] for r in runs.values())
    fractions = sorted(r["spec"]["task"]["train_fraction"] for r in runs.values())
    assert fractions == [0.5, 0.6, 0.7]

    detail = client.get(f"/v1/experiments/{experiment['id']}").json()
    assert detail["status_counts"] == {"succeeded": 3}
    assert [r["id"] for r in detail["runs"]] == experiment["run_ids"]
    listed = client.get("/v1/experiments", params={"limit": 50}).json()["items"]
    assert experiment["id"] in [e["id"] for e in listed]

    # As the last run finished, the worker kept the answer to the experiment page's first query,
    # under the key the api computes for it: the page's first open reads it.
    url = pg_stack.env["GROKLAB_DATABASE_URL"]
    key = wait_until(lambda: _kept_overlay_key(url, experiment["id"]), timeout=60)
    overlay = client.get(f"/v1/experiments/{experiment['id']}/overlay_query").json()
    assert overlay["field"] == "task.train_fraction" and overlay["query"]["group_by"] == ["task.train_fraction"]
    first = client.post("/v1/metrics/query", json=overlay["query"])
    assert first.headers["x-answer-cache"] == "hit", key
    query = MetricQuery.model_validate(overlay["query"])
    with session_scope(url) as session:
        runs = metric_answers.select_runs(session, query, "local")
        fresh = metric_answers.serialise(metric_answers.read_rows(session, Settings(database_url=url), query, runs), "json")
    assert first.json() == json.loads(fresh)
    assert [len(g["run_ids"]) for g in first.json()["groups"]] == [1, 1, 1]


def _kept_overlay_key(url: str, experiment_id: int) -> str | None:
    """The key of the experiment's default overlay answer, once it is in cached_answers."""
    with session_scope(url) as session:
        experiment = run_store.get_experiment(session, experiment_id)
        query = overlay_query(experiment, experiment.runs).query
        key = metric_answers.answer_key(
            query, "json", metric_answers.select_runs(session, query, experiment.owner), experiment.owner
        )
        return key if session.get(CachedAnswer, key) is not None else None


def test_stop_when_ends_a_run_succeeded_where_its_condition_held_long_enough(client: httpx.Client) -> None:
    spec = tiny_spec(phases=[{"steps": 3000}], stop_when=[{"metric": "train_acc", "at_least": 1.0, "for_steps": 100}])
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    run = wait_for_runs(client, [run_id], timeout=120)[run_id]
    assert run["status"] == "succeeded", run
    stopped = run["stopped_early_at_step"]
    assert stopped is not None and 100 <= stopped < 3000 and run["step"] == stopped
    series = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "train_acc"}).json()["series"]["train_acc"]
    assert series[-1][0] == stopped
    held = [value for step, value in series if step >= stopped - 100]
    assert held and all(value >= 1.0 for value in held)  # at every evaluation of its last 100 steps
    assert any(f"stopped at step {stopped}" in (e["message"] or "") for e in run["events"])


def test_run_listing_pages_with_a_cursor(client: httpx.Client) -> None:
    experiment = client.post("/v1/experiments", json={**tiny_spec(), "phases": [{"steps": 5}], "seeds": [0, 1, 2]}).json()
    wait_for_runs(client, experiment["run_ids"])
    seen, cursor = [], None
    while True:
        params = {"experiment_id": experiment["id"], "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/runs", params=params).json()
        seen += [run["id"] for run in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == experiment["run_ids"]
    succeeded = client.get("/v1/runs", params={"experiment_id": experiment["id"], "status": "succeeded"}).json()
    assert len(succeeded["items"]) == 3
    assert client.get("/v1/runs", params={"experiment_id": experiment["id"], "status": "failed"}).json()["items"] == []


def test_cancel_stops_a_running_run_within_seconds_and_keeps_its_metrics(client: httpx.Client) -> None:
    run_id = client.post("/v1/experiments", json={**tiny_spec(), "phases": [{"steps": LONG_STEPS}]}).json()["run_ids"][0]
    wait_until(lambda: client.get(f"/v1/runs/{run_id}").json()["step"] > 20, timeout=60)

    asked = time.monotonic()
    response = client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    run = wait_for_runs(client, [run_id], timeout=30)[run_id]
    stopped_after = time.monotonic() - asked

    assert run["status"] == "cancelled" and stopped_after < 5
    assert 0 < run["step"] < LONG_STEPS
    series = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "train_loss"}).json()["series"]
    assert len(series["train_loss"]) >= 2
    assert client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"


def test_cancelled_queued_run_never_starts(client: httpx.Client, pg_stack: Stack) -> None:
    busy = client.post("/v1/experiments", json={**tiny_spec(), "phases": [{"steps": LONG_STEPS}]}).json()["run_ids"][0]
    wait_for_runs(client, [busy], statuses={"running"})
    waiting = client.post("/v1/experiments", json=tiny_spec()).json()["run_ids"][0]
    cancelled = client.post(f"/v1/runs/{waiting}/cancel").json()
    assert cancelled["status"] == "cancelled"

    client.post(f"/v1/runs/{busy}/cancel")
    wait_for_runs(client, [busy])
    # Once the worker has taken the cancelled run's message off the queue, it must have skipped it.
    queue = redis.Redis.from_url(redis_url())
    wait_until(lambda: queue.llen(pg_stack.env["GROKLAB_QUEUE_NAME"]) == 0, timeout=30)
    time.sleep(1.0)
    run = client.get(f"/v1/runs/{waiting}").json()
    assert run["status"] == "cancelled" and run["started_at"] is None and run["step"] == 0
    assert [e["status"] for e in run["events"]] == ["queued", "cancelled"]
    assert client.get(f"/v1/runs/{waiting}/metrics").json()["series"] == {}


def test_a_cuda_run_trains_on_a_gpu_host_and_elsewhere_fails_with_the_engines_message(client: httpx.Client) -> None:
    # The worker is a child of this process on this host: it sees the GPUs this process sees.
    gpu = torch.cuda.is_available()
    run_id = client.post("/v1/experiments", json={**tiny_spec(), "device": "cuda"}).json()["run_ids"][0]
    run = wait_for_runs(client, [run_id])[run_id]
    assert run["finished_at"]
    if gpu:
        assert run["status"] == "succeeded", run
        assert run["step"] == run["total_steps"] and run["latest_metrics"]["train_acc"] == 1.0
    else:
        assert run["status"] == "failed"
        assert "CUDA" in run["error"]
        assert [e["status"] for e in run["events"]] == ["queued", "running", "failed"]
    conflict = client.post(f"/v1/runs/{run_id}/cancel")  # finished either way
    assert conflict.status_code == 409


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": True, "broker": True}}
    assert "/v1/experiments" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def _message_of(run: dict) -> str:
    """The broker message that carried the run to its worker, as its `running` event names it."""
    [started] = [e["message"] for e in run["events"] if e["status"] == "running"]
    found = re.search(r"from message (\S+) of \d+ runs", started or "")
    assert found, started
    return found.group(1)


def test_fork_children_of_parents_that_finished_together_go_out_in_full_packs(client: httpx.Client) -> None:
    """The paper's Fig. 7 shape, scaled down: 2 seeds x 4 D' at P=23. The 2 phase-1 runs train as
    one ensemble; their 8 children then go out in one full message of 8, not 2 messages of 4 (one
    per parent). The full Fig. 7 shape: tests/worker/test_tasks.py."""
    seeds, subset_sizes = [0, 1], [40, 80, 120, 160]  # D' < D = 264 (half of 23^2)
    experiment = {
        "kind": "ungrokking",
        "base": tiny_spec(task={"op": "add", "p": 23, "train_fraction": 0.5}, phases=[{"steps": 60}], eval_every=20),
        "seeds": seeds,
        "subset_sizes": subset_sizes,
        "phase2_steps": 40,
    }
    response = client.post("/v1/experiments", json=experiment)
    assert response.status_code == 201, response.text
    runs = wait_for_runs(client, response.json()["run_ids"], timeout=120)
    assert {run["status"] for run in runs.values()} == {"succeeded"}, runs

    parents = [run for run in runs.values() if run["role"] == "phase1"]
    children = [run for run in runs.values() if run["role"] == "phase2"]
    assert len(parents) == len(seeds) and len(children) == len(seeds) * len(subset_sizes)
    assert len({_message_of(run) for run in parents}) == 1
    per_message = Counter(_message_of(run) for run in children)
    assert list(per_message.values()) == [ENSEMBLE_SIZE], per_message
    for child in children:
        assert child["step"] == 100 and runs[child["parent_run_id"]]["role"] == "phase1"
