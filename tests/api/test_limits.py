"""Per-owner limits through the real api: submission rate (429 + Retry-After), queued work, spec bounds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from groklab.store.database import session_scope
from groklab.store.models import Experiment
from tests.services import Stack, bearer, create_key, tiny_spec

# The auth_stack allows 5 submissions a minute and 10,000 queued optimizer steps per owner.
RATE, QUEUED_STEPS = 5, 10_000


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


def test_submissions_over_the_rate_are_429_with_retry_after_and_store_nothing(
    auth_stack: Stack, http: httpx.Client
) -> None:
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


def test_queued_work_over_the_owner_limit_is_429_until_runs_finish(
    auth_stack: Stack, http: httpx.Client
) -> None:
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
