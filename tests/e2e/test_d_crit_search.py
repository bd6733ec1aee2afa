"""d_crit_search end to end on the embedded shape (SQLite, filesystem broker) with two workers:
rounds are planned from the stored probe accuracies only once the round before has finished, the
analysis' bracket is the one those accuracies give, and a round that no process planned (its
planner died between the round's last run finishing and the next round's commit) is planned by
the api's reconciler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from engine.d_crit_bracket import narrow, probe_sizes
from groklab.store.database import session_scope
from groklab.store.metric_writes import delete_series
from groklab.store.migrate import upgrade
from groklab.store.models import Experiment, Run
from tests.services import Stack, service_env, tiny_spec, wait_until

LOW, HIGH, TOLERANCE = 10, 150, 0.3
SEARCH = {
    "kind": "d_crit_search",
    "side": "scratch",
    "low": LOW,
    "high": HIGH,
    "seeds": [0, 1],
    "probes_per_round": 2,
    "relative_tolerance": TOLERANCE,
    "max_runs": 16,
    "base": {key: value for key, value in tiny_spec().items() if key != "task"} | {"task": {"p": 13}},
}


@pytest.fixture(scope="module")
def search_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    data_dir: Path = tmp_path_factory.mktemp("search-stack")
    url = f"sqlite:///{data_dir / 'groklab.db'}"
    upgrade(url)
    env = service_env(url, None, data_dir, GROKLAB_RECONCILE_SECONDS="0.5", GROKLAB_REQUEUE_GRACE_SECONDS="2")
    stack = Stack(env=env, log_dir=data_dir)
    stack.start_worker("s1")
    stack.start_worker("s2")
    stack.start_api()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client, url
    stack.stop()


def _analysis(client: httpx.Client, experiment_id: int) -> dict[str, Any]:
    response = client.get(f"/v1/experiments/{experiment_id}/analysis")
    assert response.status_code == 200, response.text
    return response.json()


def _ended(client: httpx.Client, experiment_id: int) -> dict[str, Any]:
    return wait_until(lambda: (a := _analysis(client, experiment_id))["search"]["ended"] and a, timeout=240)


def _final_test_acc(client: httpx.Client, run_id: int) -> float:
    series = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "test_acc"}).json()["series"]["test_acc"]
    return series[-1][1]


def test_rounds_follow_the_stored_accuracies_and_a_stranded_round_is_planned_by_the_reconciler(
    search_stack: tuple[httpx.Client, str],
) -> None:
    client, url = search_stack
    response = client.post("/v1/experiments", json=SEARCH)
    assert response.status_code == 201, response.text
    experiment_id = response.json()["id"]
    assert len(response.json()["run_ids"]) == 4  # round 1 only: 2 sizes x 2 seeds

    analysis = _ended(client, experiment_id)
    search = analysis["search"]
    runs = client.get("/v1/runs", params={"experiment_id": experiment_id, "limit": 100}).json()["items"]
    assert {run["status"] for run in runs} == {"succeeded"} and {run["role"] for run in runs} == {"probe"}
    rounds = sorted({run["search_round"] for run in runs})
    assert rounds == list(range(1, len(rounds) + 1)) and len(rounds) == search["rounds"] >= 2

    # Replay the search from what the api serves: each round probes the sizes that split the
    # bracket the earlier rounds' stored accuracies left, and starts after they all finished.
    accuracy = {run["id"]: _final_test_acc(client, run["id"]) for run in runs}
    low, high = LOW, HIGH
    means: dict[int, list[float]] = {}
    for r in rounds:
        this = [run for run in runs if run["search_round"] == r]
        earlier = [run for run in runs if run["search_round"] < r]
        assert sorted({run["spec"]["task"]["train_size"] for run in this}) == probe_sizes(low, high, 2)
        if earlier:
            assert min(run["created_at"] for run in this) >= max(run["finished_at"] for run in earlier)
        for run in this:
            means.setdefault(run["spec"]["task"]["train_size"], []).append(accuracy[run["id"]])
        low, high = narrow(low, high, {d: sum(v) / len(v) for d, v in means.items()}, 0.5)
    assert search["bracket"] == [low, high]
    assert search["end_reason"] in ("reached_tolerance", "no_size_left", "max_runs")
    if search["end_reason"] == "reached_tolerance":
        assert high / low < 1 + TOLERANCE
    probes = {(p["round"], p["train_size"]): p for p in search["probes"]}
    assert len(probes) == 2 * len(rounds) and all(p["n"] == 2 for p in probes.values())
    assert search["probe_runs"] == len(runs) and search["grid_at_same_tolerance"]["runs"] > 0

    # A planner that died after the last round finished but before its round committed leaves
    # the search with every run finished, no next round and no end: make that state, and the
    # reconciler plans the round again.
    last = rounds[-1]
    with session_scope(url) as session:
        stranded = select(Run.id).where(Run.experiment_id == experiment_id, Run.search_round == last)
        delete_series(session, stranded)
        session.execute(delete(Run).where(Run.id.in_(stranded)).execution_options(synchronize_session=False))
        session.execute(update(Experiment).where(Experiment.id == experiment_id).values(search_ended_at=None))
    replanned = wait_until(
        lambda: [
            r
            for r in client.get("/v1/runs", params={"experiment_id": experiment_id, "limit": 100}).json()["items"]
            if r["search_round"] == last
        ],
        timeout=60,
    )
    assert sorted({r["spec"]["task"]["train_size"] for r in replanned}) == sorted(
        {run["spec"]["task"]["train_size"] for run in runs if run["search_round"] == last}
    )
    assert _ended(client, experiment_id)["search"]["rounds"] == last
