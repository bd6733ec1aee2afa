"""Comparing runs over the real api on both databases: grouped metric queries, the runs listing's
filters and sorts, tags and notes. Points are written through the store, no training."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import uuid
from collections import defaultdict
from typing import Any

import httpx
import pytest

from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import write_points
from tests.recorded import points_of, record_experiment
from tests.api.conftest import Backend
from tests.services import tiny_spec

SIZES = (40, 60, 80)
SEEDS = (0, 1, 2)
STEPS = 100


def _spec(size: int, seed: int, weight_decay: float = 1.0) -> dict[str, Any]:
    return tiny_spec(
        task={"op": "add", "p": 13, "train_size": size, "train_fraction": 0.5},
        optimizer={"lr": 0.003, "weight_decay": weight_decay},
        seed=seed,
    )


def _series(size: int, seed: int, grokked: bool) -> dict[str, dict[int, float]]:
    """loss with noise and NaNs; train_acc memorised at step 10; test_acc generalising at 90 (grokked)
    or never (memorised), so the analysis labels differ."""
    rng = random.Random(size * 100 + seed)
    loss = {s: (math.nan if s % 37 == 5 else 1 / (s + 1) + rng.random() * size / 100) for s in range(STEPS)}
    train = {s: (1.0 if s >= 10 else 0.2) for s in range(0, STEPS, 5)}
    test = {s: (1.0 if grokked and s >= 90 else 0.1 + rng.random() * 0.01) for s in range(0, STEPS, 5)}
    return {"loss": loss, "train_acc": train, "test_acc": test}


def _experiment(url: str, specs: list[dict[str, Any]], owner: str = "local") -> tuple[int, list[int], dict[int, Any]]:
    """An experiment with one succeeded run per spec that logged _series; its id, run ids and series."""
    series = [_series(spec["task"]["train_size"], spec["seed"], grokked=spec["task"]["train_size"] >= 60) for spec in specs]
    experiment_id, run_ids = record_experiment(
        url, [run_store.NewRun(spec=spec, total_steps=STEPS) for spec in specs],
        [points_of(logged) for logged in series],
        name="compare", owner=owner,
    )  # fmt: skip
    return experiment_id, run_ids, dict(zip(run_ids, series, strict=True))


@pytest.fixture
def sweep(backend: Backend) -> tuple[Backend, int, list[int], dict[int, Any]]:
    """Three sizes x three seeds, succeeded; on each database (the metric tests' api stacks)."""
    experiment_id, run_ids, logged = _experiment(backend.database_url, [_spec(size, seed) for size in SIZES for seed in SEEDS])
    return backend, experiment_id, run_ids, logged


def _problem_field(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return response.json()["errors"][0]["field"]


def _fold(
    logged: dict[int, Any], groups: dict[Any, list[int]], name: str, width: int, end: int
) -> dict[tuple[Any, int], tuple[int, float, float, float]]:
    """What grouping must give, from the raw points: each run's bucket mean (non-NaN values), then
    per group and bucket the runs' n, mean, min and max."""
    out = {}
    for key, run_ids in groups.items():
        per_bucket: dict[int, list[float]] = defaultdict(list)
        for run_id in run_ids:
            values: dict[int, list[float]] = defaultdict(list)
            for step, value in logged[run_id][name].items():
                if step <= end and not math.isnan(value):
                    values[step // width * width].append(value)
            for start, vs in values.items():
                per_bucket[start].append(sum(vs) / len(vs))
        for start, means in per_bucket.items():
            out[(key, start)] = (len(means), sum(means) / len(means), min(means), max(means))
    return out


def test_groups_equal_a_fold_of_the_raw_points_in_every_format(sweep: Any) -> None:
    (client, _), experiment_id, run_ids, logged = sweep
    body = {"experiment_id": experiment_id, "names": ["loss"], "max_points": 7, "group_by": ["task.train_size"]}
    answer = client.post("/v1/metrics/query", json=body)
    assert answer.status_code == 200, answer.text
    grouped = answer.json()
    assert grouped["mode"] == "groups" and grouped["bucket_width"] == 15 and grouped["group_by"] == ["task.train_size"]
    assert [g["group"] for g in grouped["groups"]] == [{"task.train_size": s} for s in SIZES]
    by_size = {g["group"]["task.train_size"]: g["run_ids"] for g in grouped["groups"]}
    assert by_size == {s: run_ids[i * 3 : i * 3 + 3] for i, s in enumerate(SIZES)}
    expected = _fold(logged, by_size, "loss", 15, 99)
    got = {(r["group"]["task.train_size"], r["step_start"]): (r["n"], r["mean"], r["min"], r["max"]) for r in grouped["rows"]}
    assert set(got) == set(expected) and len(got) == 3 * 7
    for key, (n, mean, low, high) in expected.items():
        assert got[key][0] == n == 3
        assert got[key][1:] == pytest.approx((mean, low, high), rel=1e-12)
    # A band is a band: the runs' means differ within a group, so min < mean < max somewhere.
    assert any(r["min"] < r["mean"] < r["max"] for r in grouped["rows"])
    flat = [
        {"task.train_size": r["group"]["task.train_size"], **{k: v for k, v in r.items() if k != "group"}}
        for r in grouped["rows"]
    ]
    ndjson = client.post("/v1/metrics/query", json={**body, "format": "ndjson"})
    assert [json.loads(line) for line in ndjson.text.splitlines()] == flat
    as_csv = list(csv.DictReader(io.StringIO(client.post("/v1/metrics/query", json={**body, "format": "csv"}).text)))
    assert [int(r["task.train_size"]) for r in as_csv] == [r["task.train_size"] for r in flat]
    assert [float(r["mean"]) for r in as_csv] == [r["mean"] for r in flat]
    params = {"experiment_id": experiment_id, "names": "loss", "max_points": 7, "group_by": "task.train_size"}
    assert client.get("/v1/metrics/query", params=params).json() == grouped
    # Two fields and the label: grokked runs are the sizes >= 60 (see _series).
    two = client.post("/v1/metrics/query", json={**body, "group_by": ["label", "seed"]}).json()
    assert {(g["group"]["label"], g["group"]["seed"]): len(g["run_ids"]) for g in two["groups"]} == {
        ("grokked", s): 2 for s in SEEDS
    } | {("memorised", s): 1 for s in SEEDS}


def test_wide_buckets_fold_from_rollups_to_the_same_groups(backend: Backend) -> None:
    """Buckets of >= 16 steps come from rollup blocks on PostgreSQL (raw points on SQLite): the
    groups still equal the fold of every point, bucket edges cutting blocks included."""
    client, url = backend
    experiment_id, run_ids, _ = _experiment(url, [_spec(size, seed) for size in (40, 60) for seed in (0, 1)])
    rng = random.Random(7)
    logged = {}
    for run_id in run_ids:
        points = {s: (math.nan if s % 97 == 3 else rng.gauss(0, 1)) for s in range(0, 5000, 3)}
        logged[run_id] = {"wide": points}
        with session_scope(url) as session:
            write_points(session, run_id, [("wide", s, v) for s, v in points.items()])
    answer = client.post(
        "/v1/metrics/query",
        json={
            "experiment_id": experiment_id,
            "names": ["wide"],
            "max_points": 7,
            "start_step": 5,
            "group_by": ["task.train_size"],
        },
    ).json()
    width = answer["bucket_width"]
    assert width >= 16 and answer["end_step"] == 4998
    groups = {g["group"]["task.train_size"]: g["run_ids"] for g in answer["groups"]}
    shifted = {run_id: {"wide": {s - 5: v for s, v in series["wide"].items() if s >= 5}} for run_id, series in logged.items()}
    expected = _fold(shifted, groups, "wide", width, 4998 - 5)
    got = {(r["group"]["task.train_size"], r["step_start"] - 5): (r["n"], r["mean"], r["min"], r["max"]) for r in answer["rows"]}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key][0] == value[0] == 2
        assert got[key][1:] == pytest.approx(value[1:], rel=1e-9)


def test_the_overlay_query_groups_by_the_field_the_experiment_varies_within_100000_rows(backend: Backend) -> None:
    """GET /v1/experiments/{id}/overlay_query: the one definition of what the experiment page's
    overlay charts ask for (groklab/overlay_query.py), which the page posts as it is."""
    client, url = backend
    specs = [_spec(size, seed, weight_decay) for size in SIZES for weight_decay in (0.3, 1.0) for seed in (0, 1)]
    experiment_id, run_ids, _ = _experiment(url, specs)
    path = f"/v1/experiments/{experiment_id}/overlay_query"
    overlay = client.get(path).json()
    # D before weight decay; never the seed (seeds are folded into each line's band).
    assert overlay["fields"] == ["optimizer.weight_decay", "task.train_size"] and overlay["field"] == "task.train_size"
    query = overlay["query"]
    assert {k: v for k, v in query.items() if v is not None and k not in ("start_step", "limit")} == {
        "experiment_id": experiment_id,
        "names": ["test_acc", "train_acc", "train_loss", "test_loss", "param_norm"],
        "max_points": 1000,
        "group_by": ["task.train_size"],
        "format": "json",
    }
    answer = client.post("/v1/metrics/query", json=query)
    assert answer.status_code == 200, answer.text
    assert [(g["group"]["task.train_size"], len(g["run_ids"])) for g in answer.json()["groups"]] == [(s, 4) for s in SIZES]
    # A sweep's own field comes first, though D varies too.
    with session_scope(url) as session:
        run_store.get_experiment(session, experiment_id).spec = {"sweep": {"grid": {"optimizer.weight_decay": [0.3, 1.0]}}}
    assert client.get(path).json()["query"]["group_by"] == ["optimizer.weight_decay"]
    each = client.get(path, params={"field": "label", "seeds": "each", "series": "loss"}).json()
    assert each["field"] == "label" and each["query"]["group_by"] == ["label", "seed"]
    assert each["query"]["names"][-1] == "loss" and len(each["query"]["names"]) == 6
    for params, field in (({"field": "task.nope"}, "field"), ({"seeds": "some"}, "seeds")):
        bad = client.get(path, params=params)
        assert (bad.status_code, _problem_field(bad)) == (422, field), bad.text
    # 250 lines (seeds one by one) x 5 series get 80 buckets: 100,000 rows.
    with session_scope(url) as session:
        specs = [_spec(40 + 20 * (i % 3), i) for i in range(250)]
        created = run_store.create_experiment(
            session, name="many", spec={}, runs=[run_store.NewRun(spec=spec, total_steps=STEPS) for spec in specs]
        )
        for run in created.runs:  # cancelled: the stack's reconciler must not send them to its worker
            run.status = run_store.CANCELLED
        many = created.id
    assert client.get(f"/v1/experiments/{many}/overlay_query", params={"seeds": "each"}).json()["query"]["max_points"] == 80
    assert client.get(f"/v1/experiments/{many}/overlay_query").json()["query"]["max_points"] == 1000


def test_runs_listing_filters_and_sorts_like_python(sweep: Any) -> None:
    (client, _), experiment_id, run_ids, _ = sweep
    every = client.get(f"/v1/experiments/{experiment_id}").json()["runs"]
    client.patch(f"/v1/runs/{run_ids[4]}", json={"tags": {"keep": "yes"}}).raise_for_status()
    cases = [
        ({"where": json.dumps({"task.train_size": 60})}, lambda r: r["spec"]["task"]["train_size"] == 60, "id"),
        (
            {"where": json.dumps({"seed": 2, "task.train_size": 80.0})},
            lambda r: r["spec"]["seed"] == 2 and r["spec"]["task"]["train_size"] == 80,
            "id",
        ),
        ({"label": "memorised"}, lambda r: r["spec"]["task"]["train_size"] == 40, "id"),
        ({"label": "grokked,memorised", "status": "succeeded,failed"}, lambda r: True, "id"),
        ({"status": "queued"}, lambda r: False, "id"),
        ({"tag": "keep=yes"}, lambda r: r["id"] == run_ids[4], "id"),
        ({"tag": "keep"}, lambda r: r["id"] == run_ids[4], "id"),
        ({"tag": "keep=no"}, lambda r: False, "id"),
        ({}, lambda r: True, "-spec.seed"),
        ({}, lambda r: True, "final_loss"),
        ({"where": json.dumps({"seed": 1})}, lambda r: r["spec"]["seed"] == 1, "-final_test_acc"),
        ({}, lambda r: True, "-id"),
    ]
    for params, keep, sort in cases:
        expected = [r for r in every if keep(r)]
        descending, name = sort.startswith("-"), sort.removeprefix("-")

        def value(run: dict[str, Any], name: str = name) -> Any:
            if name.startswith("spec."):
                return run["spec"][name.removeprefix("spec.")]
            if name.startswith("final_"):
                return run["latest_metrics"][name.removeprefix("final_")]
            return run[name]

        # Numbers here: ascending or descending, ties by id, nulls last.
        expected.sort(key=lambda r: (value(r) is None, -value(r) if descending else value(r), r["id"]))
        pages, cursor = [], None
        while True:
            query = {**params, "experiment_id": experiment_id, "limit": 2, **({"sort": sort} if sort != "id" else {})}
            page = client.get("/v1/runs", params={**query, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, (params, page.text)
            pages.extend(run["id"] for run in page.json()["items"])
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert pages == [r["id"] for r in expected], (params, sort)


def test_tags_and_notes_round_trip_and_are_bounded(sweep: Any) -> None:
    (client, _), experiment_id, run_ids, _ = sweep
    run = client.patch(f"/v1/runs/{run_ids[0]}", json={"tags": {"lr": "high", "paper.fig": "7"}, "note": "odd dip"})
    assert run.status_code == 200 and run.json()["tags"] == {"lr": "high", "paper.fig": "7"} and run.json()["note"] == "odd dip"
    kept = client.patch(f"/v1/runs/{run_ids[0]}", json={"tags": {"lr": None, "x": "1"}}).json()
    assert kept["tags"] == {"paper.fig": "7", "x": "1"} and kept["note"] == "odd dip"
    assert client.get(f"/v1/runs/{run_ids[0]}").json()["tags"] == {"paper.fig": "7", "x": "1"}
    listed = client.get("/v1/runs", params={"experiment_id": experiment_id, "tag": "paper.fig=7"}).json()["items"]
    assert [r["id"] for r in listed] == [run_ids[0]] and listed[0]["note"] == "odd dip"
    assert client.patch(f"/v1/runs/{run_ids[0]}", json={"note": ""}).json()["note"] is None
    experiment = client.patch(f"/v1/experiments/{experiment_id}", json={"tags": {"batch": uuid.uuid4().hex}, "note": "n"})
    assert experiment.status_code == 200, experiment.text
    tag = experiment.json()["tags"]["batch"]
    assert experiment.json()["note"] == "n"
    found = client.get("/v1/experiments", params={"tag": f"batch={tag}"}).json()["items"]
    assert [(e["id"], e["tags"], e["note"]) for e in found] == [(experiment_id, {"batch": tag}, "n")]
    assert client.get(f"/v1/experiments/{experiment_id}").json()["tags"] == {"batch": tag}
    too_long = client.patch(f"/v1/runs/{run_ids[1]}", json={"tags": {"k": "v" * 201}})
    assert (too_long.status_code, _problem_field(too_long)) == (422, "tags.k")
    too_many = client.patch(f"/v1/runs/{run_ids[1]}", json={"tags": {f"k{i}": "v" for i in range(33)}})
    assert (too_many.status_code, _problem_field(too_many)) == (422, "tags")
    bad_key = client.patch(f"/v1/experiments/{experiment_id}", json={"tags": {"a b": "v"}})
    assert bad_key.status_code == 422 and _problem_field(bad_key).startswith("tags")
    long_note = client.patch(f"/v1/runs/{run_ids[1]}", json={"note": "x" * 10_001})
    assert (long_note.status_code, _problem_field(long_note)) == (422, "note")
    assert client.get(f"/v1/runs/{run_ids[1]}").json()["tags"] == {}


def test_another_owners_runs_never_appear_and_their_patch_is_404(backend: Backend) -> None:
    client, url = backend
    other = f"other-{uuid.uuid4().hex[:8]}"
    experiment_id, run_ids, _ = _experiment(url, [_spec(40, 0), _spec(60, 1)], owner=other)
    with session_scope(url) as session:
        run_store.get_run(session, run_ids[0]).tags = {"shared": "tag"}
    for params in (
        {"sort": "-id", "limit": 1000},
        {"where": json.dumps({"task.train_size": 40})},
        {"tag": "shared"},
        {"label": "grokked", "limit": 1000},
    ):
        listed = client.get("/v1/runs", params=params)
        assert listed.status_code == 200, listed.text
        assert not {r["id"] for r in listed.json()["items"]} & set(run_ids), params
    for params in ({"experiment_id": experiment_id}, {"experiment_id": experiment_id, "sort": "-id"}):
        assert client.get("/v1/runs", params=params).json()["items"] == []  # as for a missing experiment
    for path in (f"/v1/runs/{run_ids[0]}", f"/v1/experiments/{experiment_id}"):
        assert client.patch(path, json={"note": "mine"}).status_code == 404
    grouped = client.post("/v1/metrics/query", json={"run_ids": run_ids, "max_points": 5, "group_by": ["seed"]})
    assert grouped.status_code == 404
    assert client.get(f"/v1/experiments/{experiment_id}/overlay_query").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/v1/runs", {"where": json.dumps({"task.nope": 1})}, "where"),
        ("GET", "/v1/runs", {"where": "[1]"}, "where"),
        ("GET", "/v1/runs", {"sort": "nope"}, "sort"),
        ("GET", "/v1/runs", {"sort": "-spec.task.nope"}, "sort"),
        ("GET", "/v1/runs", {"label": "great"}, "label"),
        ("GET", "/v1/runs", {"status": "done"}, "status"),
        ("GET", "/v1/runs", {"tag": "a b=c"}, "tag"),
        ("GET", "/v1/runs", {"cursor": "x"}, "cursor"),
        ("GET", "/v1/runs", {"sort": "created_at", "cursor": "!!"}, "cursor"),
        ("POST", "/v1/metrics/query", {"run_ids": [1], "max_points": 5, "group_by": ["task.nope"]}, "group_by"),
        ("POST", "/v1/metrics/query", {"run_ids": [1], "group_by": ["seed"]}, "group_by"),
        ("POST", "/v1/metrics/query", {"run_ids": [1], "where": {"optimizer.nope": 1}}, "where"),
        ("GET", "/v1/metrics/query", {"run_ids": "1", "max_points": 5, "group_by": "phases.x"}, "group_by"),
    ],
)
def test_bad_paths_sorts_and_filters_are_422_naming_the_field(
    sqlite_api_stack: Any, method: str, path: str, params: dict[str, Any], field: str
) -> None:
    stack, _ = sqlite_api_stack
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        response = client.post(path, json=params) if method == "POST" else client.get(path, params=params)
    assert (response.status_code, _problem_field(response)) == (422, field), response.text


def test_client_and_cli_find_tag_and_group_runs(sqlite_api_stack: Any) -> None:
    """The Python client and `groklab runs`/`groklab tag` over the same listing (one database: the
    api tests above cover both)."""
    from groklab.client import Client
    from tests.client.test_client_cli import groklab

    stack, url = sqlite_api_stack
    experiment_id, run_ids, _ = _experiment(url, [_spec(size, seed) for size in SIZES for seed in (0, 1)])
    with Client(stack.base_url) as client:
        grokked = client.runs(experiment_id, where={"task.train_size": 60}, label="grokked")
        assert [run.id for run in grokked] == run_ids[2:4]
        client.tag(grokked[0], {"fig": "7"}, note="look")
        assert client.runs(experiment_id, tags={"fig": "7"})[0].note == "look"
        client.tag(experiment_id, {"paper": "yes"}, experiment=True)
        assert client.experiment(experiment_id).tags == {"paper": "yes"}
        frame = client.runs(experiment_id, sort="-spec.task.train_size", as_dataframe=True)
        assert list(frame["id"]) == [*run_ids[4:], *run_ids[2:4], *run_ids[:2]]
        assert list(frame["spec.task.train_size"]) == [80, 80, 60, 60, 40, 40]
        assert "final_test_acc" in frame.columns
        groups = client.metrics(
            experiment=experiment_id, names=["test_acc"], max_points=4, group_by=["task.train_size"], as_dataframe=True
        )
        assert set(groups["task.train_size"]) == set(SIZES) and set(groups["n"]) == {2}
    found = groklab(
        "runs",
        "--experiment",
        str(experiment_id),
        "--where",
        "task.train_size=60",
        "--label",
        "grokked",
        "--json",
        url=stack.base_url,
    )
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == run_ids[2:4]
    table = groklab("runs", "--experiment", str(experiment_id), "--where", "task.train_size=60", url=stack.base_url)
    assert table.returncode == 0 and "2 run(s)" in table.stdout, table.stderr
    tagged = groklab("tag", str(run_ids[5]), "lr=high", "--note", "spike at 40", url=stack.base_url)
    assert tagged.returncode == 0, tagged.stderr
    assert f"run {run_ids[5]}: lr=high; note: spike at 40" in tagged.stderr
    by_tag = groklab("runs", "--tag", "lr=high", "--json", url=stack.base_url)
    assert [json.loads(line)["id"] for line in by_tag.stdout.splitlines()] == [run_ids[5]]
    bad = groklab("runs", "--sort", "nope", url=stack.base_url)
    assert bad.returncode == 1 and "422" in bad.stderr and "sort" in bad.stderr
