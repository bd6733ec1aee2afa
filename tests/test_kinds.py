"""Experiment kinds are plug-ins: one module registered by name (engine/kinds/), with the server's
per-kind hooks (groklab/kinds.py) looked up the same way."""

from __future__ import annotations

import pytest

from engine.experiments import plan_experiment
from engine.spec import RunSpec
from groklab.analysis import Thresholds


def test_a_kind_registered_from_outside_is_planned_validated_analysed_and_reported() -> None:
    """Adding a kind is one module: a request model and a plan, registered by name; planning, the
    request union and the server's analysis hooks pick it up without naming it anywhere else."""
    from typing import Literal

    from pydantic import TypeAdapter

    from engine import kinds
    from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, run_spec
    from groklab import kinds as server_kinds
    from groklab.client import report
    from groklab.client.report.figures import svg

    class Doubling(KindRequest):
        kind: Literal["doubling"]
        sizes: list[int]

    def plan(request: Doubling, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
        return [PlannedRun(spec=run_spec({"task": {"p": 11}}, request.base, {"task": {"train_size": 2 * size}}), role="doubled")
                for size in request.sizes]  # fmt: skip

    kinds.register(ExperimentKind("doubling", Doubling, plan))
    server_kinds.register_hooks(
        "doubling", server_kinds.ServerHooks(analysis=lambda experiment, records, thresholds: {"doubled": len(records)})
    )
    try:
        request = TypeAdapter(kinds.request_type()).validate_python({"kind": "doubling", "sizes": [10, 20]})
        planned = plan_experiment(request, 10)
        assert [run.spec.task.train_size for run in planned] == [20, 40] and {run.role for run in planned} == {"doubled"}
        with pytest.raises(ValueError, match="sizes"):
            TypeAdapter(kinds.request_type()).validate_python({"kind": "doubling"})

        class Stored:
            kind = "doubling"

        assert server_kinds.analysis_sections(Stored(), [object(), object()], Thresholds()) == {"doubled": 2}  # type: ignore[arg-type]

        # ...and reported: a report section of its own, with a claim and a figure.
        def claims(data: dict) -> list[report.Claim]:
            n = len(report.rows(data["doubling"]))
            return [
                report.Claim("doubling", "every size doubled", "-", f"{n} runs", "2 runs", report.PASS if n == 2 else report.FAIL)
            ]

        report.register(report.Section("doubling", "Doubled sizes", claims, lambda axes, data: axes.plot([1, 2], [2, 4])))
        data = {"doubling": report.ExperimentData("doubling", 1, {}, [{"id": 1, "status": "succeeded"}] * 2, {}, {}, None)}
        (section,) = [s for s in report.sections() if s.name == "doubling"]
        assert [c.verdict for c in section.claims(data)] == [report.PASS]
        assert report.experiments()["doubling"] == "Doubled sizes"
        assert svg(lambda axes: section.figure(axes, data)).startswith("<svg")
    finally:
        kinds.unregister("doubling")
        server_kinds.unregister_hooks("doubling")
        report.unregister("doubling")
    assert "doubling" not in kinds.kinds() and "doubling" not in report.experiments()
