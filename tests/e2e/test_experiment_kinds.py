"""The paper's experiments as single POSTs, trained end to end, with the server's analyses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from statistics import median

import httpx
import pytest

from tests.services import ROOT, Stack, migrated_pg_database, redis_url, service_env, wait_for_runs


@pytest.fixture(scope="module")
def kinds_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Two workers, so that forked runs train side by side as they would on a cluster."""
    data_dir: Path = tmp_path_factory.mktemp("kinds-stack")
    with migrated_pg_database() as database_url:
        stack = Stack(env=service_env(database_url, redis_url(), data_dir), log_dir=data_dir)
        stack.start_worker("k1")
        stack.start_worker("k2")
        stack.start_api()
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            yield client
        stack.stop()


def _example(name: str) -> dict:
    return json.loads((ROOT / "examples" / "ci" / f"{name}.json").read_text())


@pytest.mark.slow
def test_ungrokking_forks_phase_two_and_finds_d_crit_between_small_and_large_subsets(
    kinds_client: httpx.Client,
) -> None:
    response = kinds_client.post("/v1/experiments", json=_example("ungrokking"))
    assert response.status_code == 201, response.text
    experiment = response.json()
    assert experiment["kind"] == "ungrokking"
    runs = wait_for_runs(kinds_client, experiment["run_ids"], timeout=900)
    assert {run["status"] for run in runs.values()} == {"succeeded"}

    (parent,) = [r for r in runs.values() if r["role"] == "phase1"]
    children = sorted((r for r in runs.values() if r["role"] == "phase2"), key=lambda r: r["spec"]["phases"][-1]["subset_size"])
    assert [c["spec"]["phases"][-1]["subset_size"] for c in children] == [100, 300, 800]
    late_test_acc = {}
    for child in children:
        # Trained once, then forked: each child starts after its parent ended, from its state.
        assert child["parent_run_id"] == parent["id"]
        assert child["started_at"] >= parent["finished_at"]
        series = kinds_client.get(f"/v1/runs/{child['id']}/metrics", params={"names": "test_acc"}).json()["series"]
        steps = [s for s, _ in series["test_acc"]]
        assert steps[0] == 0 and steps[-1] == 5500 and steps == sorted(set(steps))
        # The median of the last 10 evaluations: one evaluation may sit on a loss spike.
        late_test_acc[child["spec"]["phases"][-1]["subset_size"]] = median(v for _, v in series["test_acc"][-10:])

    analysis = kinds_client.get(f"/v1/experiments/{experiment['id']}/analysis").json()
    assert analysis["complete"] is True
    assert late_test_acc[100] < 0.3 and late_test_acc[800] > 0.95  # measured ~0.07 and ~0.99
    labels = {run["id"]: run["label"] for run in analysis["runs"]}
    assert labels[children[0]["id"]] == "ungrokked"
    assert labels[parent["id"]] == "grokked"
    d_crit = analysis["d_crit"]["phase2"]["pooled"]["d_crit"]
    assert 100 < d_crit < 800


@pytest.mark.slow
def test_grokking_run_is_labelled_grokked_and_random_labels_memorised(kinds_client: httpx.Client) -> None:
    grokking = kinds_client.post(
        "/v1/experiments",
        json={"kind": "grokking", "base": {"task": {"p": 47, "train_fraction": 0.5}, "phases": [{"steps": 2500}], "eval_every": 25}},
    ).json()
    memorising = kinds_client.post(
        "/v1/experiments",
        json={
            "task": {"p": 47, "train_fraction": 0.5, "random_labels": True},
            "optimizer": {"weight_decay": 0.1},
            "phases": [{"steps": 800}],
            "eval_every": 25,
        },
    ).json()
    run_ids = grokking["run_ids"] + memorising["run_ids"]
    wait_for_runs(kinds_client, run_ids, timeout=600)
    grokked = kinds_client.get(f"/v1/runs/{grokking['run_ids'][0]}/analysis").json()
    memorised = kinds_client.get(f"/v1/runs/{memorising['run_ids'][0]}/analysis").json()
    assert grokked["label"] == "grokked", grokked
    assert grokked["memorisation_step"] < grokked["generalisation_step"]
    assert memorised["label"] == "memorised", memorised
    assert memorised["final_test_acc"] < 0.1


def test_ungrokking_with_a_subset_larger_than_phase_one_is_422_naming_the_field(kinds_client: httpx.Client) -> None:
    spec = {**_example("ungrokking"), "subset_sizes": [100, 5000]}
    response = kinds_client.post("/v1/experiments", json=spec)
    assert response.status_code == 422
    assert any("subset_sizes" in e["field"] for e in response.json()["errors"]), response.json()


def test_ungrokking_from_a_missing_run_is_404_naming_phase1_run_id(kinds_client: httpx.Client) -> None:
    spec = {**_example("ungrokking"), "phase1_run_id": 999999}
    response = kinds_client.post("/v1/experiments", json=spec)
    assert response.status_code == 404
    assert response.json()["errors"][0]["field"] == "phase1_run_id"
