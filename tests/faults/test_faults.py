"""Lose nothing, run nothing twice: real processes killed, servers stopped and wiped mid-run."""

from __future__ import annotations

import functools
import json
import re
import signal
import threading
import time
from typing import Any

import httpx
import pytest
import torch

from engine.sink import MemorySink
from engine.spec import ExperimentSpec
from engine.train import train_run
from groklab.client import Client
from groklab.dispatch import send_message
from groklab.settings import Settings
from tests.faults.conftest import FAULT_SUMMARY
from tests.local_servers import PrivatePostgres, PrivateRedis
from tests.services import Stack, tiny_spec, wait_for_runs, wait_until
from worker.celery_config import make_celery

STEPS = 1500
EVAL_EVERY = 10


def fault_spec(seed: int = 0) -> dict[str, Any]:
    return {**tiny_spec(), "phases": [{"steps": STEPS}], "eval_every": EVAL_EVERY, "seeds": [seed]}


def undisturbed_series(spec: dict[str, Any]) -> dict[str, dict[int, float]]:
    return _undisturbed_series(json.dumps(spec, sort_keys=True))


@functools.cache
def _undisturbed_series(spec_json: str) -> dict[str, dict[int, float]]:
    # Cached: the stateless-worker tests compare the same spec once per checkpoint store.
    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    sink = MemorySink()
    (run_spec,) = ExperimentSpec.model_validate(spec).expand()
    train_run(run_spec, sink, device="cpu")
    return sink.series


def assert_series_complete_and_equal(client: httpx.Client, run_id: int, spec: dict[str, Any]) -> None:
    """Every eval step present once, and every value equal to an undisturbed run's (1e-6)."""
    served = client.get(f"/v1/runs/{run_id}/metrics").json()["series"]
    expected = undisturbed_series(spec)
    lost = 0
    for name, points in expected.items():
        got = {step: value for step, value in served.get(name, [])}
        lost += len(set(points) - set(got))
        assert sorted(got) == sorted(points), f"{name}: steps differ"
        for step, value in points.items():
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, step)
    FAULT_SUMMARY["points lost"] += lost
    assert [s for s, _ in served["test_acc"]] == list(range(0, STEPS + 1, EVAL_EVERY))


def finished_once(client: httpx.Client, run_ids: list[int]) -> None:
    for run_id in run_ids:
        run = client.get(f"/v1/runs/{run_id}").json()
        finals = [e for e in run["events"] if e["status"] in ("succeeded", "failed", "cancelled")]
        FAULT_SUMMARY["duplicates"] += max(0, len(finals) - 1)
        assert run["status"] == "succeeded" and len(finals) == 1, run["events"]
        FAULT_SUMMARY["runs finished"] += 1


def resumed_from(run: dict[str, Any]) -> int:
    """The step of the stored checkpoint the run's last worker resumed it from."""
    (step,) = [
        int(m.group(1))
        for e in run["events"]
        if (m := re.fullmatch(r"resuming from the checkpoint at step (\d+)", e["message"] or ""))
    ][-1:]
    return step


def running_past(client: httpx.Client, run_id: int, step: int) -> dict[str, Any]:
    return wait_until(
        lambda: (r := client.get(f"/v1/runs/{run_id}").json())["status"] == "running" and r["step"] >= step and r,
        timeout=120,
    )


@pytest.fixture
def client(fault_stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=fault_stack.base_url, timeout=30)


def test_kill_9_worker_mid_run_another_worker_finishes_it(fault_stack: Stack, client: httpx.Client) -> None:
    spec = fault_spec(seed=1)
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    run = running_past(client, run_id, 400)
    victim = run["worker"].split("@")[0]
    fault_stack.workers[victim].send_signal(signal.SIGKILL)
    FAULT_SUMMARY["faults injected"] += 1

    run = wait_for_runs(client, [run_id], timeout=180)[run_id]
    assert run["status"] == "succeeded"
    assert not run["worker"].startswith(victim + "@")
    assert "lease expired" in " ".join(e["message"] or "" for e in run["events"])
    assert resumed_from(run) > 0  # from the last periodic checkpoint before the kill, not step 0
    finished_once(client, [run_id])
    assert_series_complete_and_equal(client, run_id, spec)
    fault_stack.start_worker(victim)


def test_same_task_delivered_twice_is_trained_once(fault_stack: Stack, client: httpx.Client) -> None:
    spec = {**fault_spec(seed=2), "phases": [{"steps": 300}]}
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    send_message(make_celery(Settings(**_settings_of(fault_stack))), [run_id])
    FAULT_SUMMARY["faults injected"] += 1
    run = wait_for_runs(client, [run_id], timeout=120)[run_id]
    time.sleep(2)  # the duplicate message is consumed and skipped by now
    run = client.get(f"/v1/runs/{run_id}").json()
    assert [e["status"] for e in run["events"]] == ["queued", "running", "succeeded"]
    finished_once(client, [run_id])


def test_api_restart_mid_sweep_loses_nothing(fault_stack: Stack, client: httpx.Client) -> None:
    spec = {**fault_spec(seed=7), "seeds": [7, 8]}
    run_ids = client.post("/v1/experiments", json=spec).json()["run_ids"]
    running_past(client, run_ids[0], 100)
    fault_stack.restart_api()
    FAULT_SUMMARY["faults injected"] += 1

    wait_for_runs(client, run_ids, timeout=240)
    finished_once(client, run_ids)
    for run_id, seed in zip(run_ids, (7, 8)):
        assert_series_complete_and_equal(client, run_id, {**fault_spec(seed=seed)})


def test_postgres_crashed_and_redis_killed_mid_sweep_nothing_fails_nothing_exits(
    fault_stack: Stack, client: httpx.Client, servers: tuple[PrivatePostgres, PrivateRedis]
) -> None:
    """An outage of each server while both workers train: the api answers 503 with Retry-After
    (never 500), a client's read waits the database outage out, an experiment POSTed while the
    broker is down is accepted and runs after it, no worker exits, every run succeeds once with
    the series of an undisturbed run, and the api logs each outage in a line or two, with no
    traceback."""
    postgres, broker = servers
    spec = {**fault_spec(seed=9), "seeds": [9, 11]}
    experiment = client.post("/v1/experiments", json=spec).json()
    run_ids = experiment["run_ids"]
    running_past(client, run_ids[0], 300)
    with Client(fault_stack.base_url, retry_seconds=120) as reader:
        reader.run(run_ids[0])  # this client has reached the api: what follows is an outage

        postgres.stop()  # immediate: as a crash leaves it
        FAULT_SUMMARY["faults injected"] += 1
        for path in (f"/v1/experiments/{experiment['id']}", f"/v1/runs/{run_ids[0]}/metrics"):
            answer = client.get(path)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5", (path, answer.text)
            assert answer.json()["dependency"] == "database" and "database cannot be reached" in answer.json()["detail"]
        waited: list[Any] = []
        reading = threading.Thread(target=lambda: waited.append(reader.run(run_ids[1])))
        reading.start()
        time.sleep(4)
        assert reading.is_alive()  # waiting out the outage, not failed
        postgres.start()
        reading.join(timeout=60)
        assert waited and waited[0].id == run_ids[1]

    broker.kill()  # and every message it held
    FAULT_SUMMARY["faults injected"] += 1
    during = client.post("/v1/experiments", json={**fault_spec(seed=12), "phases": [{"steps": 300}]})
    assert during.status_code == 201, during.text
    assert during.json()["status_counts"] == {"queued": 1}
    time.sleep(2)
    broker.start()

    runs = wait_for_runs(client, [*run_ids, *during.json()["run_ids"]], timeout=300)
    assert {r["status"] for r in runs.values()} == {"succeeded"}
    finished_once(client, list(runs))
    for run_id, seed in zip(run_ids, (9, 11)):
        assert_series_complete_and_equal(client, run_id, fault_spec(seed=seed))
    assert all(worker.poll() is None for worker in fault_stack.workers.values()), "a worker exited"
    api_log = (fault_stack.log_dir / "api.log").read_text(errors="replace")
    assert "Traceback" not in api_log
    assert api_log.count("database unreachable") == 1 and "database reachable again" in api_log


def _settings_of(stack: Stack) -> dict[str, str]:
    prefix = "GROKLAB_"
    return {k[len(prefix) :].lower(): v for k, v in stack.env.items() if k.startswith(prefix)}


def test_sigterm_worker_checkpoints_requeues_and_exits(fault_stack: Stack, client: httpx.Client) -> None:
    spec = fault_spec(seed=10)
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    run = running_past(client, run_id, 300)
    name = run["worker"].split("@")[0]
    worker = fault_stack.workers[name]
    worker.send_signal(signal.SIGTERM)
    FAULT_SUMMARY["faults injected"] += 1
    assert worker.wait(timeout=30) == 0

    run = wait_for_runs(client, [run_id], timeout=180)[run_id]
    messages = " ".join(e["message"] or "" for e in run["events"])
    assert f"{name}@" in messages and "shut down; re-queued" in messages
    assert [e["status"] for e in run["events"]] == ["queued", "running", "queued", "running", "running", "succeeded"]
    assert resumed_from(run) >= 300  # the checkpoint written at the SIGTERM, not step 0
    finished_once(client, [run_id])
    assert_series_complete_and_equal(client, run_id, spec)
    fault_stack.start_worker(name)
