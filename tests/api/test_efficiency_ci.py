"""The efficiency analysis on the CI configuration (examples/ci/efficiency.json, P=47): C_mem's norm
at fixed train loss rises with D, C_gen's is flat, and the api computes their crossing from the
stored series.

Training the configuration costs about ten CPU-minutes, so the series come from a real run of it
recorded by tests/api/record_ci_efficiency.py; they are stored again, through the metric
writes, in the database of a real api, which is asked over HTTP for the experiment's analysis.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from engine.experiments import EfficiencyExperiment, plan_experiment
from engine.spec import RunSpec
from groklab.client.report.efficiency import FLAT_SPREAD
from groklab.submission import stored_run
from tests.recorded import record_experiment
from tests.api.record_ci_efficiency import FIXTURE
from tests.services import ROOT, Stack

EXAMPLE = ROOT / "examples" / "ci" / "efficiency.json"
Tweak = Callable[[dict[str, Any], str, list[list[Any]]], list[list[Any]]]


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


def _store(database_url: str, recorded: dict[str, Any], tweak: Tweak | None = None) -> int:
    """The example's experiment with the recorded series as its runs' stored points, all succeeded."""
    request = EfficiencyExperiment.model_validate_json(EXAMPLE.read_text())
    planned = plan_experiment(request, 1000)
    logged = []
    for run in recorded["runs"]:
        series = {name: tweak(run, name, points) if tweak else points for name, points in run["series"].items()}
        logged.append([(name, step, value) for name, points in series.items() for step, value in points if value is not None])
    experiment_id, _ = record_experiment(
        database_url, [stored_run(run) for run in planned], logged,
        name=request.name, kind="efficiency", spec=request.model_dump(mode="json"),
    )  # fmt: skip
    return experiment_id


def _efficiency(client: httpx.Client, experiment_id: int) -> dict[str, Any]:
    response = client.get(f"/v1/experiments/{experiment_id}/analysis")
    assert response.status_code == 200, response.text
    return response.json()["efficiency"]


def _curve(efficiency: dict[str, Any], group: str) -> tuple[list[int], list[float]]:
    rows = [row for row in efficiency[group] if row["param_norm_at_loss"] is not None]
    return [row["train_size"] for row in rows], [row["param_norm_at_loss"] for row in rows]


def test_the_recording_is_of_the_ci_configuration_as_the_example_plans_it_today(recorded: dict[str, Any]) -> None:
    request = EfficiencyExperiment.model_validate_json(EXAMPLE.read_text())
    planned = [run.spec.model_dump(mode="json") for run in plan_experiment(request, 1000)]
    # Through RunSpec: a field added since the recording takes its default, which trains as before
    # (the methods' fields are off by default); any other difference is a new configuration.
    stored = [RunSpec.model_validate(run["spec"]).model_dump(mode="json") for run in recorded["runs"]]
    assert stored == planned, "re-record: tests/api/record_ci_efficiency.py"
    assert all(set(run["series"]) >= {"train_loss", "param_norm", "train_acc", "test_acc"} for run in recorded["runs"])


def test_c_mem_rises_with_d_c_gen_is_flat_and_the_crossing_comes_from_the_stored_series(
    sqlite_api_stack: tuple[Stack, str], recorded: dict[str, Any]
) -> None:
    stack, database_url = sqlite_api_stack
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        efficiency = _efficiency(client, _store(database_url, recorded))
        mem_sizes, mem = _curve(efficiency, "memorise")
        gen_sizes, gen = _curve(efficiency, "generalise")
        request = json.loads(EXAMPLE.read_text())
        assert mem_sizes == request["memorise_sizes"], efficiency["memorise"]
        assert gen_sizes == request["generalise_sizes"], efficiency["generalise"]
        assert all(a < b for a, b in zip(mem, mem[1:])), mem
        assert (max(gen) - min(gen)) / np.mean(gen) < FLAT_SPREAD, gen
        for row in efficiency["memorise"] + efficiency["generalise"]:
            drifts = [point["param_norm_drift"] for point in row["sweep"]]
            assert all(0 <= x < 1 for x in drifts) and row["max_param_norm_drift"] == max(drifts)

        # The crossing: where C_mem's norm rises through C_gen's (held flat below its sizes).
        assert efficiency["d_crit"] is not None, efficiency["reason"]
        gap = [n - float(np.interp(d, gen_sizes, gen)) for d, n in zip(mem_sizes, mem)]
        below = max(i for i, g in enumerate(gap) if g < 0)
        assert gap[below + 1] >= 0 and mem_sizes[below] < efficiency["d_crit"] <= mem_sizes[below + 1]

        # Heavier generalising nets (their last evaluations' norms up 10%) move the crossing to a
        # larger D: the verdict follows the stored numbers.
        def heavier_generaliser(run: dict[str, Any], name: str, points: list[list[Any]]) -> list[list[Any]]:
            if name != "param_norm" or run["spec"]["task"]["random_labels"]:
                return points
            return [[step, value * 1.1 if i >= len(points) - 5 else value] for i, (step, value) in enumerate(points)]

        moved = _efficiency(client, _store(database_url, recorded, heavier_generaliser))
        assert _curve(moved, "memorise") == (mem_sizes, mem)
        assert all(b == pytest.approx(a * 1.1) for a, b in zip(gen, _curve(moved, "generalise")[1]))
        assert moved["d_crit"] is not None and moved["d_crit"] > efficiency["d_crit"]
