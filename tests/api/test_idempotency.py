"""Idempotency-Key on POST /v1/experiments: a retry returns the first experiment; another body is 409."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from sqlalchemy import func, select, update

from groklab.store.database import session_scope
from groklab.store.models import Experiment, IdempotencyKey, Run, utcnow
from tests.services import Stack, bearer, create_key, redis_url, tiny_spec


@pytest.fixture
def http(auth_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def owner(auth_stack: Stack) -> tuple[str, dict[str, str]]:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    return name, bearer(create_key(auth_stack.env["GROKLAB_DATABASE_URL"], name))


def _stored(stack: Stack, owner: str) -> tuple[int, int, int]:
    """(experiments, runs) of the owner in the database, and messages waiting in the queue."""
    with session_scope(stack.env["GROKLAB_DATABASE_URL"]) as session:
        experiments = session.scalar(select(func.count(Experiment.id)).where(Experiment.owner == owner))
        runs = session.scalar(select(func.count(Run.id)).join(Experiment).where(Experiment.owner == owner))
    return experiments, runs, redis.Redis.from_url(redis_url()).llen(stack.env["GROKLAB_QUEUE_NAME"])


def test_retry_with_same_key_and_body_returns_the_same_experiment_and_queues_nothing(
    auth_stack: Stack, http: httpx.Client, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    spec = tiny_spec(seeds=[0, 1])
    first = http.post("/v1/experiments", json=spec, headers={**headers, "Idempotency-Key": "submit-1"})
    assert first.status_code == 201, first.text
    before = _stored(auth_stack, name)
    # The same body serialised differently (key order, spacing) is the same request.
    again = http.post(
        "/v1/experiments",
        content=json.dumps(dict(reversed(list(spec.items()))), indent=2),
        headers={**headers, "Idempotency-Key": "submit-1", "Content-Type": "application/json"},
    )
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["run_ids"] == first.json()["run_ids"]
    assert _stored(auth_stack, name) == before == (1, 2, before[2])


def test_same_key_with_another_body_is_409_and_stores_nothing(
    auth_stack: Stack, http: httpx.Client, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    keyed = {**headers, "Idempotency-Key": "submit-2"}
    assert http.post("/v1/experiments", json=tiny_spec(), headers=keyed).status_code == 201
    before = _stored(auth_stack, name)
    response = http.post("/v1/experiments", json=tiny_spec(seeds=[7]), headers=keyed)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert _stored(auth_stack, name) == before


def test_keys_belong_to_their_owner(auth_stack: Stack, http: httpx.Client) -> None:
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    made = []
    for label in ("a", "b"):
        headers = bearer(create_key(url, f"idem-{label}-{uuid.uuid4().hex[:8]}"))
        response = http.post("/v1/experiments", json=tiny_spec(), headers={**headers, "Idempotency-Key": "shared"})
        assert response.status_code == 201
        made.append(response.json()["id"])
    assert made[0] != made[1]


def test_concurrent_retries_make_one_experiment(auth_stack: Stack, owner: tuple[str, dict[str, str]]) -> None:
    name, headers = owner
    keyed = {**headers, "Idempotency-Key": "burst"}

    def submit(_: int) -> httpx.Response:
        return httpx.post(f"{auth_stack.base_url}/v1/experiments", json=tiny_spec(), headers=keyed, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(submit, range(4)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert _stored(auth_stack, name)[:2] == (1, 1)


def test_malformed_idempotency_key_is_422(http: httpx.Client, owner: tuple[str, dict[str, str]]) -> None:
    _, headers = owner
    response = http.post("/v1/experiments", json=tiny_spec(), headers={**headers, "Idempotency-Key": "x" * 201})
    assert response.status_code == 422
    assert "idempotency-key" in response.json()["errors"][0]["field"].lower()


def test_a_key_older_than_its_lifetime_is_forgotten_and_may_name_a_new_request(
    auth_stack: Stack, http: httpx.Client, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    keyed = {**headers, "Idempotency-Key": "daily-report"}
    first = http.post("/v1/experiments", json=tiny_spec(), headers=keyed)
    assert first.status_code == 201, first.text
    # A day and a bit later (the default lifetime is 24 h): the same key, another body.
    with session_scope(auth_stack.env["GROKLAB_DATABASE_URL"]) as session:
        session.execute(
            update(IdempotencyKey).where(IdempotencyKey.owner == name).values(created_at=utcnow() - timedelta(hours=25))
        )
    second = http.post("/v1/experiments", json=tiny_spec(seeds=[7]), headers=keyed)
    assert second.status_code == 201, second.text
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    # ...and the new use replays as any fresh key does.
    again = http.post("/v1/experiments", json=tiny_spec(seeds=[7]), headers=keyed)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == second.json()["id"]
    assert _stored(auth_stack, name)[:2] == (2, 2)
