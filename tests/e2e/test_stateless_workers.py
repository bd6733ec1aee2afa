"""Workers sharing PostgreSQL and Redis but no folder: forks and resumes cross hosts through the store.

Each backend (the database, a `file://` folder mounted on both workers, `s3://` on SeaweedFS)
gets one stack: an api and two worker processes, each with a GROKLAB_DATA_DIR of its own, so a
checkpoint one worker wrote reaches the other only through the store.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from groklab.store.migrate import upgrade
from tests.faults.test_faults import assert_series_complete_and_equal, fault_spec, resumed_from, running_past
from tests.local_seaweedfs import SeaweedFS
from tests.services import (
    Stack,
    create_pg_database,
    drop_pg_database,
    redis_url,
    service_env,
    tiny_spec,
    wait_for_runs,
    wait_until,
)

WORKERS = ("a", "b")
PHASE1_STEPS, PHASE2_STEPS = 300, 200
SUBSET_SIZES = [20, 40, 60]  # D' < D = 84 (half of P=13's 169 pairs)


@dataclass
class WorkerStack:
    stack: Stack
    client: httpx.Client
    data_dirs: dict[str, Path]


def _store_env(backend: str, folder: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "database":
        return {}
    if backend == "file":
        return {"GROKLAB_CHECKPOINT_URL": (folder / "checkpoints").as_uri()}
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    return {f"GROKLAB_{name.upper()}": value for name, value in server.store_settings().items()}


@pytest.fixture(scope="module", params=["database", "file", "s3"])
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    folder = tmp_path_factory.mktemp(f"stateless-{request.param}")
    name, database_url = create_pg_database()
    upgrade(database_url)
    env = service_env(
        database_url,
        redis_url(),
        folder / "api",
        GROKLAB_LEASE_SECONDS="6",
        GROKLAB_RECONCILE_SECONDS="1",
        GROKLAB_REQUEUE_GRACE_SECONDS="2",
        # Lone runs, so that the resumed run equals an undisturbed one bit for bit (tests/faults).
        GROKLAB_ENSEMBLE_SIZE="1",
        **_store_env(request.param, folder, request),
    )
    stack = Stack(env=env, log_dir=folder)
    data_dirs = {worker: folder / f"worker-{worker}-data" for worker in WORKERS}
    for worker, data_dir in data_dirs.items():
        stack.start_worker(worker, env={"GROKLAB_DATA_DIR": str(data_dir)})
    stack.start_api()
    # Both consume before anything is sent, so that the runs spread over both.
    wait_until(lambda: all("ready." in (folder / f"worker-{w}.log").read_text() for w in WORKERS), timeout=60)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield WorkerStack(stack, client, data_dirs)
    stack.stop()
    drop_pg_database(name)


def _ungrokking_experiment() -> dict[str, Any]:
    return {
        "kind": "ungrokking",
        "base": {**tiny_spec(), "phases": [{"steps": PHASE1_STEPS}]},
        "subset_sizes": SUBSET_SIZES,
        "weight_decays": [1.0],
        "phase2_steps": PHASE2_STEPS,
        "seeds": [0, 1],
    }


def _worker_of(run: dict[str, Any]) -> str:
    return run["worker"].split("@")[0]


def _files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_ungrokking_phase_two_runs_fork_on_both_workers_from_the_stored_parent(workers: WorkerStack) -> None:
    client = workers.client
    response = client.post("/v1/experiments", json=_ungrokking_experiment())
    assert response.status_code == 201, response.text
    runs = wait_for_runs(client, response.json()["run_ids"], timeout=120)
    assert {run["status"] for run in runs.values()} == {"succeeded"}, workers.stack.logs()

    parents = {r["id"]: r for r in runs.values() if r["role"] == "phase1"}
    children = [r for r in runs.values() if r["role"] == "phase2"]
    assert len(parents) == 2 and len(children) == 2 * len(SUBSET_SIZES)
    assert {_worker_of(child) for child in children} == set(WORKERS)
    # At least one fork started on the host its parent never touched: it read the parent's
    # checkpoint from the store.
    assert any(_worker_of(child) != _worker_of(parents[child["parent_run_id"]]) for child in children)

    for child in children:
        parent_id = child["parent_run_id"]
        parent = client.get(f"/v1/runs/{parent_id}/metrics", params={"names": "test_acc"}).json()["series"]["test_acc"]
        series = client.get(f"/v1/runs/{child['id']}/metrics", params={"names": "test_acc"}).json()["series"]["test_acc"]
        steps = [step for step, _ in series]
        assert steps[0] == 0 and steps[-1] == PHASE1_STEPS + PHASE2_STEPS and steps == sorted(set(steps))
        assert series[: len(parent)] == parent  # the parent's whole history, then its own phase 2

    for data_dir in workers.data_dirs.values():
        assert _files_in(data_dir) == [], _files_in(data_dir)


def test_worker_killed_mid_run_is_resumed_by_the_other_from_the_stored_checkpoint(workers: WorkerStack) -> None:
    client = workers.client
    spec = fault_spec(seed=1)
    run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]
    victim = _worker_of(running_past(client, run_id, 400))
    workers.stack.workers[victim].send_signal(signal.SIGKILL)

    run = wait_for_runs(client, [run_id], timeout=120)[run_id]
    assert run["status"] == "succeeded", workers.stack.logs()
    assert _worker_of(run) != victim
    assert "lease expired" in " ".join(e["message"] or "" for e in run["events"])
    assert resumed_from(run) > 0  # the last periodic checkpoint before the kill, not step 0
    assert_series_complete_and_equal(client, run_id, spec)
    for data_dir in workers.data_dirs.values():
        assert _files_in(data_dir) == [], _files_in(data_dir)
