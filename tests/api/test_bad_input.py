"""Bad input gets a 4xx problem+json naming the field, and writes nothing to the database or queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from groklab.store.database import session_scope
from groklab.store.models import Experiment, Run
from tests.services import Stack, redis_url, tiny_spec


def _counts(url: str) -> tuple[int, int]:
    with session_scope(url) as session:
        return session.scalar(select(func.count(Experiment.id))), session.scalar(select(func.count(Run.id)))


@pytest.fixture
def unchanged(pg_database: str, pg_stack: Stack) -> Iterator[None]:
    before = _counts(pg_database)
    yield
    assert _counts(pg_database) == before
    queue = pg_stack.env["GROKLAB_QUEUE_NAME"]
    assert redis.Redis.from_url(redis_url()).llen(queue) == 0


def _assert_problem(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    fields = [error["field"] for error in body.get("errors", [])]
    assert any(f == field or f.startswith(field + ".") or f.endswith("." + field) for f in fields), body
    return body


SEARCH = {
    "kind": "d_crit_search",
    "low": 20,
    "high": 80,
    "seeds": [0, 1],
    "max_runs": 20,
    "base": {"task": {"p": 13, "train_fraction": 0.5}, "phases": [{"steps": 5}], "eval_every": 5},
}
COMPARISON = {
    "kind": "method_comparison",
    "method": {"optimizer": {"betas": [0.9, 0.99]}},
    "seeds": [0, 1],
    "base": {"task": {"p": 13, "train_fraction": 0.5}, "phases": [{"steps": 5}], "eval_every": 5},
    "grid": {"learning_rate": [0.001, 0.003], "weight_decay": [1.0]},
}
BAD_SPECS = [
    ({**tiny_spec(), "learning_rate": 0.1}, "learning_rate"),
    ({**tiny_spec(), "task": {"op": "add", "p": "many"}}, "task.p"),
    ({**tiny_spec(), "task": {"op": "add", "p": 13, "train_size": -5}}, "task.train_size"),
    ({**tiny_spec(), "task": {"op": "pow", "p": 13}}, "task.op"),
    ({**tiny_spec(), "task": {"op": "divide", "p": 12}}, "task.p"),
    ({**tiny_spec(), "task": {"op": "add", "p": 13, "train_size": 169}}, "task.train_size"),
    ({**tiny_spec(), "phases": [{"steps": 0}]}, "phases.0.steps"),
    ({**tiny_spec(), "phases": []}, "phases"),
    (
        {**tiny_spec(), "phases": [{"steps": 5}, {"steps": 5, "train_set": "subset", "subset_size": 500}]},
        "phases.1.subset_size",
    ),
    ({**tiny_spec(), "seeds": [0, 1], "sweep": {"grid": {"task.train_size": list(range(1, 501))}}}, "sweep"),
    ({**tiny_spec(), "sweep": {"grid": {"tsk.p": [13]}}}, "sweep.tsk.p"),
    ({**tiny_spec(), "sweep": {"grid": {"task.p": [13, 12]}, "zip": {}}, "task": {"op": "divide", "p": 13}}, "sweep"),
    ({**tiny_spec(), "eval_schedule": {"kind": "log", "points": 100}}, "eval_schedule"),  # and eval_every
    ({**tiny_spec(), "eval_every": None, "eval_schedule": {"kind": "log", "points": 1}}, "eval_schedule.log.points"),
    ({**tiny_spec(), "eval_every": None, "eval_schedule": {"kind": "cosine"}}, "eval_schedule"),
    ({**tiny_spec(), "stop_when": [{"metric": "test_accuracy", "at_least": 0.9}]}, "stop_when.0.metric"),
    (tiny_spec(task={"op": "permutation", "n": 3}, progress_measures=True), "progress_measures"),
    (tiny_spec(model={"kind": "mlp"}, progress_measures=True), "progress_measures"),
    ({**tiny_spec(), "stop_when": [{"metric": "test_acc", "for_steps": 10}]}, "stop_when.0.at_least"),
    ({**tiny_spec(), "stop_when": [{"metric": "test_acc", "at_least": 0.9, "for_steps": -1}]}, "stop_when.0.for_steps"),
    ({**SEARCH, "low": 100, "high": 100}, "high"),
    ({**tiny_spec(), "grad_filter": {"kind": "ema", "alpha": 1.5}}, "grad_filter.ema.alpha"),
    ({**tiny_spec(), "loss": "mse", "loss_precision": "float64"}, "loss_precision"),
    ({**tiny_spec(), "precision": "float16"}, "precision"),
    ({**SEARCH, "high": 169}, "high"),  # P=13 has 169 pairs: no test set would be left
    ({**SEARCH, "low": 0}, "low"),
    ({**SEARCH, "side": "ungrokking", "high": 120}, "high"),  # over phase 1's D of 84
    ({**SEARCH, "relative_tolerance": 0}, "relative_tolerance"),
    ({**SEARCH, "relative_tolerance": -0.1}, "relative_tolerance"),
    ({**SEARCH, "max_runs": 3}, "max_runs"),  # one round is 2 sizes x 2 seeds
    ({**SEARCH, "side": "ungrokking", "max_runs": 5}, "max_runs"),  # + 2 phase-1 runs
    ({**SEARCH, "max_runs": 100_000}, "max_runs"),  # over the server's runs per experiment
    ({**SEARCH, "low": 20, "high": 21}, "high"),  # no size between them to probe
    ({**COMPARISON, "grid": {"learning_rate": [0.003], "weight_decay": [1.0]}}, "grid.learning_rate"),  # not the base's
    ({**COMPARISON, "grid": {"learning_rate": [0.001 * (i + 1) for i in range(9)], "weight_decay": [1.0]}}, "grid.learning_rate"),
    ({**COMPARISON, "grid": {"learning_rate": [0.001], "weight_decay": [-1.0]}}, "grid.weight_decay.0"),
    ({**COMPARISON, "method": {"optimizer": {"lr": 0.01}}}, "method.optimizer.lr"),  # the grid sets it
    ({**COMPARISON, "baseline": {"phases": [{"steps": 10}]}}, "baseline.phases"),  # shared by both sides
    ({**COMPARISON, "method": {"no_such_option": {"kind": "ema"}}}, "method.no_such_option"),
    ({**COMPARISON, "seeds": list(range(300))}, "grid"),  # 2 sides x 2 x 300 seeds: over the run limit
]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_invalid_spec_is_422_naming_the_field(client: httpx.Client, unchanged: None, spec: dict[str, Any], field: str) -> None:
    _assert_problem(client.post("/v1/experiments", json=spec), 422, field)


def test_body_that_is_not_json_is_422(client: httpx.Client, unchanged: None) -> None:
    response = client.post("/v1/experiments", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


def test_body_over_one_mebibyte_is_413(client: httpx.Client, unchanged: None) -> None:
    spec = {**tiny_spec(), "name": "x", "padding": "y" * (1024 * 1024 + 10)}
    _assert_problem(client.post("/v1/experiments", content=json.dumps(spec)), 413, "body")


def test_streamed_body_over_the_limit_is_413(client: httpx.Client, unchanged: None) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(300):
            yield b"z" * 4096
        yield b'"}'

    response = client.post("/v1/experiments", content=chunks(), headers={"content-type": "application/json"})
    _assert_problem(response, 413, "body")


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/v1/runs/999999", 404, "run_id"),
        ("/v1/experiments/999999", 404, "experiment_id"),
        ("/v1/runs/999999/metrics", 404, "run_id"),
        ("/v1/runs?limit=0", 422, "limit"),
        ("/v1/runs?status=exploded", 422, "status"),
        ("/v1/runs/abc", 422, "run_id"),
    ],
)
def test_bad_reads_are_4xx_naming_the_field(client: httpx.Client, path: str, status: int, field: str) -> None:
    _assert_problem(client.get(path), status, field)


def test_cancel_of_missing_run_is_404(client: httpx.Client) -> None:
    _assert_problem(client.post("/v1/runs/999999/cancel"), 404, "run_id")
