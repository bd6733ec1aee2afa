"""API keys end to end: the CLI mints and revokes them, the api answers 401/403/404 by owner and scope."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import ROOT, Stack, bearer, create_key, redis_url, service_env, tiny_spec

ANCHOR_PARAMS = ("run_id", "experiment_id")


def _owner(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def _operations(base_url: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    return [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]


def _secured(base_url: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{base_url}/openapi.json").json()
    return [(method.upper(), path) for path, ops in schema["paths"].items() for method, op in ops.items() if op.get("security")]


def _call(http: httpx.Client, method: str, path: str, key: str | None, **ids: int) -> httpx.Response:
    url = path.format(step="latest", **ids)
    headers = bearer(key) if key else {}
    body: dict[str, Any] | None = None
    if method == "POST" and path == "/v1/experiments":
        body = tiny_spec()
    elif method == "POST" and path == "/v1/metrics/query":
        body = {"run_ids": [ids.get("run_id", 1)]}
    elif method == "POST" and path == "/v1/runs/{run_id}/continue":
        body = {"steps": 10}
    elif method == "PATCH":
        body = {"note": "theirs?"}
    # A stream of a queued run never ends: read the status line only.
    with http.stream(method, url, headers=headers, json=body) as response:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            response.read()
        return response


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


@pytest.fixture(scope="module")
def owners(auth_stack: Stack) -> dict[str, Any]:
    """Alice with an experiment of two runs, Bob with a key of his own and an experiment too."""
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    alice, bob = _owner("alice"), _owner("bob")
    keys = {"alice": create_key(url, alice), "bob": create_key(url, bob)}
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as http:
        made = {}
        for who in ("alice", "bob"):
            response = http.post("/v1/experiments", json=tiny_spec(seeds=[0, 1]), headers=bearer(keys[who]))
            assert response.status_code == 201, response.text
            made[who] = response.json()
    return {"keys": keys, "experiments": made}


@pytest.fixture
def http(auth_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as client:
        yield client


def test_keys_cli_creates_lists_without_secret_and_revokes(auth_stack: Stack, http: httpx.Client) -> None:
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    owner = _owner("cli")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}, "GROKLAB_DATABASE_URL": url}

    def groklab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "groklab.cli", "keys", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    created = groklab("create", "--owner", owner, "--scopes", "read", "--name", "dashboard")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"gl_[A-Za-z0-9_-]{40,}", key)
    assert http.get("/v1/experiments", headers=bearer(key)).status_code == 200

    listing = groklab("list")
    assert listing.returncode == 0
    line = next(row for row in listing.stdout.splitlines() if f"\t{owner}\t" in row)
    assert "dashboard" in line and "\tread\t" in line and key[:10] in line
    assert key not in listing.stdout
    key_id = line.split("\t")[0]

    revoked = groklab("revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    response = http.get("/v1/experiments", headers=bearer(key))
    _assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert groklab("revoke", "999999").returncode != 0
    assert groklab("create", "--owner", owner, "--scopes", "admin").returncode != 0


def test_every_secured_operation_is_401_without_a_valid_key(auth_stack: Stack, http: httpx.Client) -> None:
    operations = _secured(auth_stack.base_url)
    # Every route but the health probes and the docs is secured, including routes added later.
    assert {path for _, path in operations} >= {"/v1/experiments", "/v1/runs", "/v1/runs/{run_id}"}
    assert len(operations) == len([op for op in _operations(auth_stack.base_url) if op[1] not in ("/healthz", "/readyz")])
    for method, path in operations:
        for key in (None, "gl_not-a-real-key"):
            response = _call(http, method, path, key, run_id=1, experiment_id=1)
            body = _assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert body["status"] == 401


def test_read_only_key_is_403_on_writes_and_write_only_is_403_on_reads(
    auth_stack: Stack, http: httpx.Client, owners: dict[str, Any]
) -> None:
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    owner = _owner("scoped")
    read_key, write_key = create_key(url, owner, "read"), create_key(url, owner, "write")
    response = http.post("/v1/experiments", json=tiny_spec(), headers=bearer(read_key))
    body = _assert_problem(response, 403)
    assert "write" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert http.post("/v1/runs/1/cancel", headers=bearer(read_key)).status_code == 403
    assert http.get("/v1/experiments", headers=bearer(read_key)).status_code == 200
    _assert_problem(http.get("/v1/experiments", headers=bearer(write_key)), 403)
    assert http.post("/v1/experiments", json=tiny_spec(), headers=bearer(write_key)).status_code == 201


def test_another_owners_objects_answer_404_exactly_like_missing_ones_on_every_id_route(
    auth_stack: Stack, http: httpx.Client, owners: dict[str, Any]
) -> None:
    alice = owners["experiments"]["alice"]
    ids = {"run_id": alice["run_ids"][0], "experiment_id": alice["id"]}
    missing = {"run_id": 10**9, "experiment_id": 10**9}
    operations = [(m, p) for m, p in _operations(auth_stack.base_url) if any(f"{{{a}}}" in p for a in ANCHOR_PARAMS)]
    assert len(operations) >= 6, operations  # runs, metrics, cancel, analyses, stream, experiment
    for method, path in operations:
        theirs = _call(http, method, path, owners["keys"]["bob"], **ids)
        absent = _call(http, method, path, owners["keys"]["bob"], **missing)
        assert theirs.status_code == absent.status_code == 404, (method, path, theirs.text)
        body_theirs, body_absent = theirs.json(), absent.json()
        for body, used in ((body_theirs, ids), (body_absent, missing)):
            for value in used.values():
                body["detail"] = body["detail"].replace(str(value), "<id>")
                for error in body.get("errors") or []:
                    error["message"] = error["message"].replace(str(value), "<id>")
        assert body_theirs == body_absent, (method, path)
        # A checkpoint download and a Fourier view need a stored checkpoint (tests/client/test_checkpoints.py
        # and tests/api/test_fourier.py have one).
        if method == "GET" and "{step}" not in path and not path.endswith("/fourier"):
            assert _call(http, method, path, owners["keys"]["alice"], **ids).status_code == 200, (method, path)
    # Bob cannot cancel Alice's run; she still can.
    cancelled = http.post(f"/v1/runs/{ids['run_id']}/cancel", headers=bearer(owners["keys"]["alice"]))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_lists_and_metric_queries_show_only_the_owners_objects(http: httpx.Client, owners: dict[str, Any]) -> None:
    alice, bob = owners["experiments"]["alice"], owners["experiments"]["bob"]
    key = owners["keys"]["alice"]
    experiments = http.get("/v1/experiments", headers=bearer(key)).json()["items"]
    assert alice["id"] in [e["id"] for e in experiments]
    assert bob["id"] not in [e["id"] for e in experiments]
    runs = http.get("/v1/runs", params={"limit": 1000}, headers=bearer(key)).json()["items"]
    assert set(alice["run_ids"]) <= {r["id"] for r in runs}
    assert not set(bob["run_ids"]) & {r["id"] for r in runs}
    assert http.get("/v1/runs", params={"experiment_id": bob["id"]}, headers=bearer(key)).json()["items"] == []
    query = http.post("/v1/metrics/query", json={"run_ids": bob["run_ids"]}, headers=bearer(key))
    _assert_problem(query, 404)
    query = http.post("/v1/metrics/query", json={"experiment_id": bob["id"]}, headers=bearer(key))
    _assert_problem(query, 404)
    own = http.post("/v1/metrics/query", json={"experiment_id": alice["id"]}, headers=bearer(key))
    assert own.status_code == 200, own.text


def test_cors_headers_only_for_configured_origins(auth_stack: Stack, http: httpx.Client) -> None:
    allowed = http.get("/healthz", headers={"Origin": "https://dash.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    preflight = http.options(
        "/v1/experiments",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
    # A 401 still carries the header, so the browser lets the dashboard read why.
    unauthorised = http.get("/v1/runs", headers={"Origin": "https://dash.example"})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["access-control-allow-origin"] == "https://dash.example"
    other = http.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def _stack(tmp_path: Path, database_url: str, **env: str) -> Stack:
    stack = Stack(env=service_env(database_url, redis_url(), tmp_path, **env), log_dir=tmp_path)
    stack.start_api()
    return stack


def test_auto_on_loopback_lets_anonymous_requests_in_as_local_with_no_cors(
    tmp_path: Path, auth_stack: Stack, owners: dict[str, Any]
) -> None:
    stack = _stack(tmp_path, auth_stack.env["GROKLAB_DATABASE_URL"], GROKLAB_HOST="127.0.0.1", GROKLAB_RECONCILE_SECONDS="0")
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            response = http.get("/v1/experiments", headers={"Origin": "https://dash.example"})
            assert response.status_code == 200
            assert "access-control-allow-origin" not in response.headers
            # Anonymous requests act as owner 'local', who does not see keyed owners' experiments.
            listed = {e["id"] for e in response.json()["items"]}
            assert not listed & {e["id"] for e in owners["experiments"].values()}
            submitted = http.post("/v1/experiments", json=tiny_spec())
            assert submitted.status_code == 201, submitted.text
            assert http.get(f"/v1/experiments/{submitted.json()['id']}").status_code == 200
    finally:
        stack.stop()


def test_auto_on_a_reachable_host_requires_keys(tmp_path: Path, auth_stack: Stack) -> None:
    stack = _stack(tmp_path, auth_stack.env["GROKLAB_DATABASE_URL"], GROKLAB_HOST="0.0.0.0", GROKLAB_RECONCILE_SECONDS="0")
    try:
        response = httpx.get(f"{stack.base_url}/v1/experiments", timeout=30)
        _assert_problem(response, 401)
    finally:
        stack.stop()


def test_auth_off_on_a_reachable_host_refuses_to_start(tmp_path: Path) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'g.db'}", None, tmp_path, GROKLAB_AUTH="off", GROKLAB_HOST="0.0.0.0")
    api = subprocess.run([sys.executable, "-c", "import api.main"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert api.returncode != 0 and "GROKLAB_AUTH=off" in api.stderr
    up = subprocess.run(
        [sys.executable, "-m", "groklab.cli", "up", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 2 and "refusing to start" in up.stderr and "loopback" in up.stderr
