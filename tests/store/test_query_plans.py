"""The control plane's queries use an index on a database of 2,000 runs (PostgreSQL's own plans):
none reads the runs table whole, which is what grows with a lab's history (benchmarks/fleet.py
measures them at 50,000)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import update

from groklab.store import leases, quotas
from groklab.store import runs as run_store
from groklab.store import search_state as search_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from groklab.store.models import Run, utcnow
from groklab.store.plans import captured_statements, explain, nodes, sequential_scans, summary

OWNERS, EXPERIMENTS_PER_OWNER, RUNS_PER_EXPERIMENT = 10, 40, 5


@pytest.fixture(scope="module")
def fleet_url() -> str:
    """2,000 runs in 400 experiments of 10 owners, all finished but one run in every tenth
    experiment, as in a lab's database; vacuumed and analysed, as autovacuum leaves a lab's tables
    (only a vacuum marks pages all-visible, which an index-only scan needs)."""
    from tests.services import create_pg_database, drop_pg_database

    name, url = create_pg_database()
    upgrade(url)
    with session_scope(url) as session:
        for owner in range(OWNERS):
            for i in range(EXPERIMENTS_PER_OWNER):
                experiment = run_store.create_experiment(
                    session, name="old", spec={}, owner=f"owner{owner}",
                    runs=[run_store.NewRun(spec={}, total_steps=100)] * RUNS_PER_EXPERIMENT,
                )  # fmt: skip
                session.execute(
                    update(Run).where(Run.experiment_id == experiment.id, Run.index >= int(i % 10 == 0))
                    .values(status=run_store.SUCCEEDED, finished_at=utcnow())
                )  # fmt: skip
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    yield url
    drop_pg_database(name)


def _plans_of(url: str, call: object) -> list[tuple[str, dict]]:
    with captured_statements(url) as seen, session_scope(url) as session:
        call(session)  # type: ignore[operator]
        session.rollback()  # the reconciler's updates need not happen: their plans are what is read
    assert seen, "the call sent no statement"
    return [(sql, explain(url, sql, params)) for sql, params in seen]


CALLS = {
    "reconciler: expired leases": lambda s: leases.expire_leases(s),
    "reconciler: runs to send": lambda s: leases.runs_to_send(s, older_than=utcnow() - timedelta(seconds=30)),
    "reconciler: searches between rounds": lambda s: search_store.searches_between_rounds(s),
    "submit: queued steps": lambda s: quotas.queued_steps(s, "owner3"),
    "submit: rate": lambda s: quotas.check_submission_rate(s, "owner3", per_minute=1000),
    "GET /v1/experiments": lambda s: run_store.experiment_runs(
        s, [e.id for e in run_store.list_experiments(s, limit=50, before_id=None, owner="owner3")]
    ),
    "GET /v1/runs?experiment_id=": lambda s: run_store.list_runs(
        s, experiment_id=EXPERIMENTS_PER_OWNER * 3 + 7, statuses=None, limit=100, after_id=None, owner="owner3"
    ),
    "GET /v1/runs?status=queued": lambda s: run_store.list_runs(
        s, experiment_id=None, statuses=["queued"], limit=100, after_id=None, owner="owner3"
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_no_control_plane_query_reads_the_runs_table_whole(fleet_url: str, name: str) -> None:
    # The reconciler's pass, every few seconds on every api, reads no table whole.
    whole = {"runs", "experiments"} if name.startswith("reconciler") else {"runs"}
    for sql, plan in _plans_of(fleet_url, CALLS[name]):
        assert not whole & set(sequential_scans(plan)), f"{name}: {summary(plan)}\n{sql}"


def test_an_owners_usage_reads_its_own_runs_only(fleet_url: str) -> None:
    """GET /v1/usage and the storage bound sum an owner's runs: through its experiments, not the
    other owners' (a sequential scan is PostgreSQL's choice only once the owner holds most runs)."""
    with session_scope(fleet_url) as session:
        small = run_store.create_experiment(
            session, name="new", spec={}, owner="newcomer", runs=[run_store.NewRun(spec={}, total_steps=1)]
        )
        small_id = small.id
    with psycopg.connect(fleet_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("ANALYZE experiments")
    try:
        [(sql, plan)] = _plans_of(fleet_url, lambda s: quotas.owner_usage(s, "newcomer"))
        assert "runs" not in sequential_scans(plan), f"{summary(plan)}\n{sql}"
    finally:
        with session_scope(fleet_url) as session:
            run_store.delete_experiment(session, small_id)


def test_the_experiments_listing_reads_its_runs_from_the_index_alone(fleet_url: str) -> None:
    """The listed experiments' run ids and statuses come from ix_runs_experiment_id_id, status in
    its leaves (migration 0011), without visiting the runs' rows, which carry their spec: at 50,000
    runs PostgreSQL otherwise read the whole table (issue #29)."""
    scans = [
        (node["Node Type"], node.get("Index Name"), summary(plan))
        for _, plan in _plans_of(fleet_url, CALLS["GET /v1/experiments"])
        for node in nodes(plan)
        if node.get("Relation Name") == "runs"
    ]
    assert [scan[:2] for scan in scans] == [("Index Only Scan", "ix_runs_experiment_id_id")], scans
