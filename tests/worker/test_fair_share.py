"""Who yields to a waiting short run (groklab/fair_share.py), against the database: one long
task per short pack, and never a resumed one before yield_after_seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.spec import ExperimentSpec, RunSpec
from groklab.fair_share import YieldPoll, is_short
from groklab.settings import Settings
from groklab.store import leases
from groklab.store import runs as run_store
from groklab.store.database import session_scope
from groklab.store.migrate import upgrade
from tests.services import tiny_spec

BUDGET = 10_000_000
GRACE = 0.5


def _spec(**overrides: object) -> RunSpec:
    (spec,) = ExperimentSpec.model_validate(tiny_spec(**overrides)).expand()
    return spec


LONG = _spec(task={"p": 47, "train_fraction": 0.5}, model={"kind": "transformer"}, phases=[{"steps": 600}])
SHORT = _spec()


def _sent(url: str, spec: RunSpec) -> int:
    """A queued run whose message was sent (no worker took it)."""
    with session_scope(url) as session:
        experiment = run_store.create_experiment(
            session, name=None, spec={}, runs=[run_store.NewRun(spec=spec.model_dump(mode="json"), total_steps=spec.total_steps)]
        )
        run_id = experiment.runs[0].id
        leases.mark_enqueued(session, [run_id])
        return run_id


@pytest.fixture
def settings(empty_database_url: str, tmp_path: Path) -> Settings:
    upgrade(empty_database_url)
    # A sent message counts as waiting after GRACE, and every call asks the database.
    return Settings(
        database_url=empty_database_url, data_dir=tmp_path, short_run_parameter_steps=BUDGET,
        short_run_grace_seconds=GRACE, cancel_poll_seconds=1e-6,
    )  # fmt: skip


def test_one_long_task_yields_to_a_waiting_short_run_and_a_resumed_one_trains_first(settings: Settings) -> None:
    assert is_short(SHORT, BUDGET) and not is_short(LONG, BUDGET)
    _sent(settings.resolved_database_url, LONG)  # a long run waiting makes nobody yield
    resumed = YieldPoll(settings, [LONG], resumed=True)
    first, second = YieldPoll(settings, [LONG], resumed=False), YieldPoll(settings, [LONG], resumed=False)
    short_task = YieldPoll(settings, [SHORT], resumed=False)
    assert not first()
    short = _sent(settings.resolved_database_url, SHORT)
    assert not first()  # an idle worker may still take it
    time.sleep(GRACE)
    assert not resumed() and not short_task()  # within yield_after_seconds; a short task never yields
    assert first() and first.gave_way_to == [short]
    assert not second()  # the turn is taken: one short run moves one long run aside
    assert first()  # and the one that yields keeps stopping


def test_fair_share_off_nobody_yields(settings: Settings) -> None:
    off = settings.model_copy(update={"short_run_parameter_steps": 0})
    _sent(settings.resolved_database_url, SHORT)
    time.sleep(GRACE)
    assert not YieldPoll(off, [LONG], resumed=False)()
