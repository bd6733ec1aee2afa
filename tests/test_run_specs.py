"""A run's spec is parsed once per process while it is unchanged (groklab/run_specs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from groklab import run_specs
from tests.services import tiny_spec


def test_a_runs_spec_is_parsed_once_and_again_after_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_specs, "_specs", type(run_specs._specs)())
    run = SimpleNamespace(id=7, spec=tiny_spec(phases=[{"steps": 20}]))
    first = run_specs.run_spec(run)
    assert first.total_steps == 20
    # Another read of the same stored spec (a new dict, as each database read makes) is the same object.
    assert run_specs.run_spec(SimpleNamespace(id=7, spec=tiny_spec(phases=[{"steps": 20}]))) is first
    # A continued run's spec changed: parsed again.
    run.spec = tiny_spec(phases=[{"steps": 30}])
    assert run_specs.run_spec(run).total_steps == 30
    with pytest.raises(ValidationError):
        run_specs.spec_of(8, {"no_such_field": 1})


def test_the_cache_is_bounded_least_recently_used_first_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_specs, "_specs", type(run_specs._specs)())
    monkeypatch.setattr(run_specs, "CACHED_SPECS", 2)
    spec = tiny_spec(phases=[{"steps": 20}])
    one = run_specs.spec_of(1, spec)
    run_specs.spec_of(2, spec)
    assert run_specs.spec_of(1, spec) is one  # 1 is now the most recently used
    run_specs.spec_of(3, spec)  # evicts 2
    assert len(run_specs._specs) == 2
    assert run_specs.spec_of(1, spec) is one
