"""Per-owner limits through the real api: submission rate (429 + Retry-After), queued work, stored
bytes, spec bounds, and the per-run storage bounds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from engine.spec import RunSpec
from groklab.storage import METRIC_POINT_BYTES, footprint, human_bytes
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from groklab.store.models import Experiment
from tests.client.test_client_cli import groklab
from tests.services import Stack, bearer, create_key, tiny_spec

# The auth_stack allows 5 submissions a minute, 10,000 queued optimizer steps and 10 MB of
# stored and planned metric points and checkpoints per owner.
RATE, QUEUED_STEPS, STORED_BYTES = 5, 10_000, 10_000_000


@pytest.fixture
def http(auth_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as client:
        yield client


def _new_owner(stack: Stack) -> tuple[str, dict[str, str]]:
    owner = f"limits-{uuid.uuid4().hex[:8]}"
    return owner, bearer(create_key(stack.env["GROKLAB_DATABASE_URL"], owner))


def _experiments_of(stack: Stack, owner: str) -> int:
    with session_scope(stack.env["GROKLAB_DATABASE_URL"]) as session:
        return session.scalar(select(func.count(Experiment.id)).where(Experiment.owner == owner))


def _steps(n: int) -> dict[str, Any]:
    return tiny_spec(phases=[{"steps": n}])


def test_submissions_over_the_rate_are_429_with_retry_after_and_store_nothing(auth_stack: Stack, http: httpx.Client) -> None:
    owner, headers = _new_owner(auth_stack)
    for _ in range(RATE):
        assert http.post("/v1/experiments", json=_steps(10), headers=headers).status_code == 201
    response = http.post("/v1/experiments", json=_steps(10), headers=headers)
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "per minute" in response.json()["detail"]
    assert "GROKLAB_SUBMISSIONS_PER_MINUTE" in response.json()["detail"]
    assert _experiments_of(auth_stack, owner) == RATE
    # The limit is the owner's: another owner submits freely.
    _, other = _new_owner(auth_stack)
    assert http.post("/v1/experiments", json=_steps(10), headers=other).status_code == 201


def test_queued_work_over_the_owner_limit_is_429_until_runs_finish(auth_stack: Stack, http: httpx.Client) -> None:
    owner, headers = _new_owner(auth_stack)
    first = http.post("/v1/experiments", json=_steps(4000), headers=headers)
    assert first.status_code == 201
    assert http.post("/v1/experiments", json=_steps(4000), headers=headers).status_code == 201
    over = http.post("/v1/experiments", json=_steps(4000), headers=headers)
    assert over.status_code == 429, over.text
    detail = over.json()["detail"]
    assert "8000" in detail and str(QUEUED_STEPS) in detail and "GROKLAB_MAX_QUEUED_STEPS_PER_OWNER" in detail
    assert _experiments_of(auth_stack, owner) == 2
    # Cancelling a queued run frees its steps.
    cancel = http.post(f"/v1/runs/{first.json()['run_ids'][0]}/cancel", headers=headers)
    assert cancel.status_code == 200
    assert http.post("/v1/experiments", json=_steps(4000), headers=headers).status_code == 201


def test_an_experiment_larger_than_the_whole_limit_is_422(auth_stack: Stack, http: httpx.Client) -> None:
    owner, headers = _new_owner(auth_stack)
    response = http.post("/v1/experiments", json=tiny_spec(seeds=[0, 1, 2], phases=[{"steps": 4000}]), headers=headers)
    assert response.status_code == 422, response.text
    assert "12000" in response.json()["detail"]
    assert _experiments_of(auth_stack, owner) == 0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (tiny_spec(task={"op": "add", "p": 1009, "train_fraction": 0.5}), "task.p"),
        (tiny_spec(phases=[{"steps": 100_000_001}]), "phases.0.steps"),
        (tiny_spec(model={"kind": "transformer", "d_model": 8192}), "model"),
    ],
    ids=["p", "steps", "d_model"],
)
def test_spec_bounds_are_422(auth_stack: Stack, http: httpx.Client, spec: dict[str, Any], field: str) -> None:
    _, headers = _new_owner(auth_stack)
    response = http.post("/v1/experiments", json=spec, headers=headers)
    assert response.status_code == 422, response.text
    assert any(field in e["field"] for e in response.json()["errors"]), response.json()


def test_a_plan_is_a_dry_run_of_submit_with_its_limits_that_stores_and_counts_nothing(
    auth_stack: Stack, http: httpx.Client
) -> None:
    owner, headers = _new_owner(auth_stack)
    plan = http.post("/v1/experiments/plan", json=tiny_spec(seeds=[0, 1], phases=[{"steps": 3000}]), headers=headers)
    assert plan.status_code == 200, plan.text
    assert plan.json() == {"kind": "sweep", "name": None, "runs": 2, "total_steps": 6000}
    bad = http.post("/v1/experiments/plan", json=tiny_spec(phases=[{"steps": 100_000_001}]), headers=headers)
    assert bad.status_code == 422 and any("phases.0.steps" in e["field"] for e in bad.json()["errors"])
    # More plans than the submission rate allows: a plan is not a submission.
    for _ in range(RATE + 1):
        assert http.post("/v1/experiments/plan", json=_steps(10), headers=headers).status_code == 200
    assert _experiments_of(auth_stack, owner) == 0
    assert http.post("/v1/experiments", json=_steps(8000), headers=headers).status_code == 201
    over = http.post("/v1/experiments/plan", json=_steps(4000), headers=headers)
    assert over.status_code == 429 and "GROKLAB_MAX_QUEUED_STEPS_PER_OWNER" in over.json()["detail"]
    read_only = bearer(create_key(auth_stack.env["GROKLAB_DATABASE_URL"], owner, scopes="read"))
    assert http.post("/v1/experiments/plan", json=_steps(10), headers=read_only).status_code == 403
    assert http.get("/v1/whoami", headers=read_only).json() == {"owner": owner, "scopes": ["read"], "auth_required": True}
    assert http.get("/v1/whoami").status_code == 401
    assert _experiments_of(auth_stack, owner) == 1


@pytest.mark.parametrize(
    ("spec", "field", "count", "bound"),
    [
        (tiny_spec(phases=[{"steps": 10_000_000}], eval_every=1), "eval_every", "10,000,001", "100,000"),
        (
            tiny_spec(
                phases=[{"steps": 100_000_000}],
                eval_every=None,
                eval_schedule={"kind": "log", "points": 1000},
                train_loss_every=1,
            ),
            "train_loss_every",
            "100,000,001",
            "100,000",
        ),
        (
            tiny_spec(phases=[{"steps": 10_000_000}], eval_every=None, checkpoint_keep_every=1),
            "checkpoint_keep_every",
            "10,000,000",
            "1,000",
        ),
        (
            {"kind": "grokking", "seeds": [0, 1], "base": tiny_spec(phases=[{"steps": 10_000_000}], eval_every=2)},
            "base.eval_every",
            "5,000,001",
            "100,000",
        ),
    ],
    ids=["eval_every", "train_loss_every", "kept_checkpoints", "kind"],
)
def test_a_run_over_a_storage_bound_is_422_naming_the_field_with_its_count_and_the_bound(
    auth_stack: Stack, http: httpx.Client, spec: dict[str, Any], field: str, count: str, bound: str
) -> None:
    owner, headers = _new_owner(auth_stack)
    for path in ("/v1/experiments", "/v1/experiments/plan"):
        response = http.post(path, json=spec, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
        detail = response.json()["detail"]
        assert count in detail and bound in detail, detail
        assert (
            "GROKLAB_MAX_KEPT_CHECKPOINTS_PER_RUN" if field == "checkpoint_keep_every" else "GROKLAB_MAX_POINTS_PER_RUN"
        ) in detail
    assert _experiments_of(auth_stack, owner) == 0


def _succeed(stack: Stack, run_id: int) -> None:
    """The run finishes, as a worker would leave it, without one."""
    with session_scope(stack.env["GROKLAB_DATABASE_URL"]) as session:
        assert run_store.transition(session, run_id, from_statuses=["queued"], to_status="succeeded")


def test_continuing_a_run_past_the_points_bound_is_422_naming_steps(auth_stack: Stack, http: httpx.Client) -> None:
    _, headers = _new_owner(auth_stack)
    run_id = http.post("/v1/experiments", json=_steps(100), headers=headers).json()["run_ids"][0]
    _succeed(auth_stack, run_id)
    response = http.post(f"/v1/runs/{run_id}/continue", json={"steps": 9_999_900}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "steps"
    assert "1,000,001" in response.json()["detail"] and "GROKLAB_MAX_POINTS_PER_RUN" in response.json()["detail"]
    assert http.get(f"/v1/runs/{run_id}", headers=headers).json()["status"] == "succeeded"


def test_stored_and_planned_bytes_bound_an_owner_429_and_usage_reports_them(auth_stack: Stack, http: httpx.Client) -> None:
    owner, headers = _new_owner(auth_stack)
    empty = http.get("/v1/usage", headers=headers).json()
    assert (empty["owner"], empty["runs"], empty["stored_bytes"], empty["planned_bytes"]) == (owner, 0, 0, 0)
    assert empty["max_stored_bytes"] == STORED_BYTES

    small = tiny_spec()
    run_id = http.post("/v1/experiments", json=small, headers=headers).json()["run_ids"][0]
    planned = footprint(RunSpec.model_validate(small))
    with session_scope(auth_stack.env["GROKLAB_DATABASE_URL"]) as session:
        write_points(session, run_id, [(name, step, 0.5) for name in ("train_loss", "test_acc") for step in range(0, 50, 10)])
    usage = http.get("/v1/usage", headers=headers).json()
    assert (usage["runs"], usage["unfinished_runs"], usage["stored_points"]) == (1, 1, 10)
    assert usage["planned_points"] == planned.metric_points - 10
    assert usage["planned_checkpoint_bytes"] == planned.checkpoint_bytes
    assert usage["stored_bytes"] == 10 * METRIC_POINT_BYTES
    assert usage["planned_bytes"] == (planned.metric_points - 10) * METRIC_POINT_BYTES + planned.checkpoint_bytes

    # 4,001 evaluations of 22 series: 8.9 MB planned, which fits once and not twice.
    heavy = tiny_spec(phases=[{"steps": 4000}], eval_every=1)
    heavy_bytes = human_bytes(footprint(RunSpec.model_validate(heavy)).bytes)
    first = http.post("/v1/experiments", json=heavy, headers=headers)
    assert first.status_code == 201, first.text
    over = http.post("/v1/experiments", json=heavy, headers=headers)
    assert over.status_code == 429, over.text
    detail = over.json()["detail"]
    assert "GROKLAB_MAX_STORED_BYTES_PER_OWNER" in detail and "10.0 MB" in detail and f"adds {heavy_bytes}" in detail, detail
    assert http.post("/v1/experiments/plan", json=heavy, headers=headers).status_code == 429
    # One experiment over the whole bound can never fit.
    alone = http.post("/v1/experiments", json=tiny_spec(phases=[{"steps": 5000}], eval_every=1), headers=headers)
    assert alone.status_code == 422 and "GROKLAB_MAX_STORED_BYTES_PER_OWNER" in alone.json()["detail"]
    # Planned bytes are those of queued and running runs: cancelling one frees them.
    assert http.post(f"/v1/runs/{first.json()['run_ids'][0]}/cancel", headers=headers).status_code == 200
    assert http.post("/v1/experiments", json=heavy, headers=headers).status_code == 201

    # The listing's run ids and status counts (read without loading runs) match each experiment's.
    listed = http.get("/v1/experiments", headers=headers).json()["items"]
    assert [e["status_counts"] for e in listed] == [{"queued": 1}, {"cancelled": 1}, {"queued": 1}]
    for item in listed:
        detail = http.get(f"/v1/experiments/{item['id']}", headers=headers).json()
        assert item["run_ids"] == [run["id"] for run in detail["runs"]]

    # Another owner's usage is its own.
    _, other = _new_owner(auth_stack)
    assert http.get("/v1/usage", headers=other).json()["runs"] == 0

    key = headers["Authorization"].removeprefix("Bearer ")
    printed = groklab("usage", "--json", url=auth_stack.base_url, api_key=key)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == http.get("/v1/usage", headers=headers).json()
    table = groklab("usage", url=auth_stack.base_url, api_key=key)
    assert table.returncode == 0 and f"owner {owner}: 3 run(s)" in table.stdout and "of 10.0 MB" in table.stdout, table.stdout
