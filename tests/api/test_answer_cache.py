"""Answers over finished runs are kept (groklab/store/answer_cache.py): read back once the runs have
finished, computed anew when a run is continued or the experiment gains runs, never shown to
another owner. Over the real api on both databases; points are written through the store."""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from groklab import metric_answers
from groklab.lifecycle.finish import keep_overlay_answer
from groklab.metric_answers import MetricQuery
from groklab.settings import Settings
from groklab.store import answer_cache, leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.metric_writes import delete_series
from groklab.store.migrate import upgrade
from groklab.store.models import CachedAnswer, Run
from tests.recorded import claim_new, points_of, record
from tests.api.conftest import Backend
from tests.api.test_compare import SEEDS, SIZES, STEPS, _experiment, _fold, _series, _spec
from tests.services import Stack, bearer, create_key

QUERY = {"names": ["loss"], "max_points": 7, "group_by": ["task.train_size"]}


def _grouped(client: httpx.Client, experiment_id: int, **extra: Any) -> httpx.Response:
    response = client.post("/v1/metrics/query", json={"experiment_id": experiment_id, **QUERY}, **extra)
    assert response.status_code == 200, response.text
    return response


def _assert_folds(answer: dict[str, Any], logged: dict[int, Any], end: int) -> None:
    """The grouped answer equals a fold of the raw points the test wrote."""
    by_size = {g["group"]["task.train_size"]: g["run_ids"] for g in answer["groups"]}
    expected = _fold(logged, by_size, "loss", answer["bucket_width"], end)
    got = {(r["group"]["task.train_size"], r["step_start"]): (r["n"], r["mean"], r["min"], r["max"]) for r in answer["rows"]}
    assert set(got) == set(expected)
    for key, (n, mean, low, high) in expected.items():
        assert got[key][0] == n
        assert got[key][1:] == pytest.approx((mean, low, high), rel=1e-12)


def _kept(url: str, *, run_ids: list[int] | None = None, experiment_id: int | None = None) -> int:
    """Entries kept for these runs' analyses, or for the experiment's queries."""
    with session_scope(url) as session:
        query = select(func.count()).select_from(CachedAnswer)
        if run_ids is not None:
            query = query.where(CachedAnswer.run_id.in_(run_ids))
        else:
            query = query.where(CachedAnswer.experiment_id == experiment_id, CachedAnswer.run_id.is_(None))
        return session.scalar(query)


def _finish(url: str, run_id: int, points: dict[str, dict[int, float]]) -> None:
    """What a worker does: claim the run, write its points, finish it."""
    with session_scope(url) as session:
        lease = leases.claim_run(session, run_id, worker="test", lease_seconds=600)
    assert lease is not None
    record(url, lease, points_of(points))


def test_a_finished_experiments_answers_are_kept_and_read_back(backend: Backend) -> None:
    client, url = backend
    experiment_id, run_ids, logged = _experiment(url, [_spec(size, seed) for size in SIZES for seed in SEEDS])
    first = _grouped(client, experiment_id)
    assert first.headers["x-answer-cache"] == "miss"
    _assert_folds(first.json(), logged, STEPS - 1)
    again = _grouped(client, experiment_id)
    assert again.headers["x-answer-cache"] == "hit" and again.headers["content-encoding"] == "gzip"
    assert again.json() == first.json() and again.headers["etag"] == first.headers["etag"]
    # A client that takes no gzip gets the same answer, uncompressed.
    plain = _grouped(client, experiment_id, headers={"Accept-Encoding": "identity"})
    assert plain.headers["x-answer-cache"] == "hit" and "content-encoding" not in plain.headers
    assert plain.json() == first.json()
    csv_first = client.post("/v1/metrics/query", json={"experiment_id": experiment_id, **QUERY, "format": "csv"})
    csv_again = client.post("/v1/metrics/query", json={"experiment_id": experiment_id, **QUERY, "format": "csv"})
    assert (csv_first.headers["x-answer-cache"], csv_again.headers["x-answer-cache"]) == ("miss", "hit")
    assert csv_again.text == csv_first.text and csv_first.text.startswith("task.train_size,name,")
    analysis = client.get(f"/v1/experiments/{experiment_id}/analysis").json()
    assert _kept(url, run_ids=run_ids) == len(run_ids)  # one analysis per run, default thresholds
    assert {r["label"] for r in analysis["runs"]} == {"grokked", "memorised"}
    # Read back, not recomputed: with the points gone (behind the api's back) the answers stay.
    with session_scope(url) as session:
        delete_series(session, select(Run.id).where(Run.experiment_id == experiment_id))
    assert _grouped(client, experiment_id).json() == first.json()
    assert client.get(f"/v1/experiments/{experiment_id}/analysis").json() == analysis
    last = next(r for r in analysis["runs"] if r["id"] == run_ids[-1])
    assert client.get(f"/v1/runs/{run_ids[-1]}/analysis").json()["final_test_acc"] == last["final_test_acc"]


def test_the_overlay_answer_kept_as_the_last_run_finishes_is_the_pages_first_read(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker does after an experiment's last run ends (finish.keep_overlay_answer), then
    the page's first open: the query it is told to send is read from the cache, and equals a fresh
    computation. With the cache off, or when the computation fails, nothing is kept."""
    client, url = backend
    experiment_id, run_ids, _ = _experiment(url, [_spec(size, seed) for size in SIZES for seed in SEEDS])
    assert keep_overlay_answer(Settings(database_url=url, answer_cache_bytes=0), experiment_id) is None
    # Three sizes are more groups than this server allows: logged, and the page gets the 422.
    assert keep_overlay_answer(Settings(database_url=url, max_metric_groups=2), experiment_id) is None
    assert "could not keep the overlay answer" in caplog.text and "more than 2 groups" in caplog.text
    assert _kept(url, experiment_id=experiment_id) == 0
    settings = Settings(database_url=url)
    assert keep_overlay_answer(settings, experiment_id) == "miss"
    assert keep_overlay_answer(settings, experiment_id) == "hit"
    overlay = client.get(f"/v1/experiments/{experiment_id}/overlay_query").json()
    query = MetricQuery.model_validate(overlay["query"])
    with session_scope(url) as session:
        runs = metric_answers.select_runs(session, query, "local")
        assert session.get(CachedAnswer, metric_answers.answer_key(query, "json", runs, "local")) is not None
        fresh = json.loads(metric_answers.serialise(metric_answers.read_rows(session, settings, query, runs), "json"))
    first = client.post("/v1/metrics/query", json=overlay["query"])
    assert first.headers["x-answer-cache"] == "hit" and _kept(url, experiment_id=experiment_id) == 1
    assert first.json() == fresh and fresh["group_by"] == ["task.train_size"] and len(fresh["rows"]) > 0


def test_an_experiment_that_gains_a_run_is_computed_anew(backend: Backend) -> None:
    client, url = backend
    experiment_id, run_ids, logged = _experiment(url, [_spec(size, 0) for size in SIZES])
    assert _grouped(client, experiment_id).headers["x-answer-cache"] == "miss"
    assert _grouped(client, experiment_id).headers["x-answer-cache"] == "hit"
    with session_scope(url) as session:  # as a d_crit_search's next round does
        experiment = run_store.get_experiment(session, experiment_id)
        [lease] = claim_new(
            session, run_store.add_runs(session, experiment, [run_store.NewRun(spec=_spec(100, 0), total_steps=STEPS)])
        )
    assert _kept(url, experiment_id=experiment_id) == 0
    running = _grouped(client, experiment_id)  # an unfinished run: nothing is kept until it finishes
    assert "x-answer-cache" not in running.headers and "etag" not in running.headers
    logged[lease.run_id] = _series(100, 0, grokked=True)
    record(url, lease, points_of(logged[lease.run_id]))
    answer = _grouped(client, experiment_id)
    assert answer.headers["x-answer-cache"] == "miss"
    assert [g["group"]["task.train_size"] for g in answer.json()["groups"]] == [*SIZES, 100]
    _assert_folds(answer.json(), logged, STEPS - 1)
    assert _grouped(client, experiment_id).headers["x-answer-cache"] == "hit"


def test_a_continued_run_is_computed_anew(sqlite_api_stack: tuple[Stack, str]) -> None:
    """On the stack without a worker (the continued run stays queued until the test finishes it)."""
    stack, url = sqlite_api_stack
    experiment_id, run_ids, logged = _experiment(url, [_spec(size, seed) for size in SIZES for seed in SEEDS])
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        before = _grouped(client, experiment_id).json()
        labels = {r["id"]: r["label"] for r in client.get(f"/v1/experiments/{experiment_id}/analysis").json()["runs"]}
        assert _kept(url, run_ids=run_ids) == len(run_ids)
        continued = run_ids[0]
        response = client.post(f"/v1/runs/{continued}/continue", json={"steps": STEPS})
        assert response.status_code == 200, response.text
        assert _kept(url, run_ids=[continued]) == 0 and _kept(url, experiment_id=experiment_id) == 0
        assert _kept(url, run_ids=run_ids[1:]) == len(run_ids) - 1
        # The second phase generalises the memorised run: a new label, new points in every bucket.
        assert labels[continued] == "memorised"
        more = {"loss": {s: 0.001 for s in range(STEPS, 2 * STEPS)}, "test_acc": {s: 1.0 for s in range(STEPS, 2 * STEPS, 5)}}
        for name, points in more.items():
            logged[continued][name] |= points
        _finish(url, continued, more)
        answer = _grouped(client, experiment_id)
        assert answer.headers["x-answer-cache"] == "miss"
        assert answer.json()["end_step"] == 2 * STEPS - 1 and answer.json() != before
        _assert_folds(answer.json(), logged, 2 * STEPS - 1)
        run = client.get(f"/v1/runs/{continued}/analysis").json()
        assert run["label"] == "grokked" and run["final_step"] == 2 * STEPS - 5


def test_another_owner_never_sees_a_kept_answer(auth_stack: Stack) -> None:
    url = auth_stack.env["GROKLAB_DATABASE_URL"]
    mine, theirs = (bearer(create_key(url, f"cache-{who}")) for who in ("mine", "theirs"))
    experiment_id, run_ids, _ = _experiment(url, [_spec(size, 0) for size in SIZES], owner="cache-mine")
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as client:
        assert _grouped(client, experiment_id, headers=mine).headers["x-answer-cache"] == "miss"
        assert _grouped(client, experiment_id, headers=mine).headers["x-answer-cache"] == "hit"
        assert client.get(f"/v1/experiments/{experiment_id}/analysis", headers=mine).status_code == 200
        for body in ({"experiment_id": experiment_id, **QUERY}, {"run_ids": run_ids, **QUERY}):
            assert client.post("/v1/metrics/query", json=body, headers=theirs).status_code == 404
        assert client.get(f"/v1/experiments/{experiment_id}/analysis", headers=theirs).status_code == 404
        assert client.get(f"/v1/runs/{run_ids[0]}/analysis", headers=theirs).status_code == 404


def test_kept_answers_are_bounded_oldest_first(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    experiment_id, _, _ = _experiment(empty_database_url, [_spec(40, 0)])
    rng = random.Random(0)
    bodies = [rng.randbytes(2000) for _ in range(8)]  # random bytes: gzip cannot shrink them
    size = len(answer_cache.compress(bodies[0]))
    limit = 5 * size  # five fit, and a quarter of it holds one
    with session_scope(empty_database_url) as session:
        for i, body in enumerate(bodies):
            answer_cache.put_many(session, [answer_cache.Entry(f"{i:064d}", experiment_id, None, body)], max_bytes=limit)
        kept = sorted(session.scalars(select(CachedAnswer.key)))
        assert kept == [f"{i:064d}" for i in range(3, 8)]  # the newest five
        assert answer_cache.get_many(session, kept[-1:]) == {kept[-1]: bodies[-1]}
        # An answer over a quarter of the bound is sent but not kept.
        big = answer_cache.Entry("f" * 64, experiment_id, None, rng.randbytes(4000))
        assert gzip.decompress(answer_cache.put_many(session, [big], max_bytes=limit)["f" * 64]) == big.body
        assert session.get(CachedAnswer, "f" * 64) is None
