"""d_crit_search: find D_crit adaptively, in rounds of probes that narrow a bracket in D (the
bracket and probe placement: engine/d_crit_bracket.py). Round 1 is planned with the experiment; later
rounds are planned by the server as rounds finish (groklab/search_rounds.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from engine.kinds import grokking, ungrokking
from engine.kinds.base import ExperimentKind, KindRequest, PlannedRun, Seeds, phase_two, run_spec, seeded
from engine.d_crit_bracket import check_bracket, round_sizes
from engine.spec import RunSpec, SpecError


class DCritSearchExperiment(KindRequest):
    """Find D_crit adaptively (engine/d_crit_bracket.py): rounds of probes that narrow a bracket in D."""

    kind: Literal["d_crit_search"]
    side: Literal["scratch", "ungrokking"] = Field(
        "scratch",
        description="scratch: train from scratch at each probed D; ungrokking: one phase-1 run per "
        "seed, then phase-2 forks at each probed D'.",
    )
    low: Annotated[int, Field(ge=1)] = Field(description="A size below D_crit (fails to generalise).")
    high: Annotated[int, Field(ge=2)] = Field(description="A size above D_crit (generalises).")
    seeds: Seeds = [0, 1, 2]
    level: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="Mean final test accuracy that counts as generalised (the analyses' D_crit level)."
    )
    relative_tolerance: Annotated[float, Field(gt=0, le=10)] = Field(
        0.1, description="Stop once high / low < 1 + relative_tolerance."
    )
    probes_per_round: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="Sizes probed per round, splitting the log-bracket evenly (so every worker has work)."
    )
    max_runs: Annotated[int, Field(ge=1)] = Field(60, description="At most this many runs in all (phase-1 runs included).")
    weight_decay: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="ungrokking side: phase 2's weight decay (default phase 1's)."
    )
    phase2_steps: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        10_000, description="ungrokking side: steps of each phase-2 probe."
    )


def search_phase1_specs(request: DCritSearchExperiment) -> list[RunSpec]:
    """The ungrokking side's phase-1 run of each seed (the ungrokking kind's defaults)."""
    return ungrokking.phase1_specs(request, request.seeds)


def plan_search_probes(
    request: DCritSearchExperiment, sizes: list[int], search_round: int, phase1_specs: list[RunSpec]
) -> list[PlannedRun]:
    """One probe per size and seed. On the ungrokking side each continues its seed's phase-1 run,
    `phase1_specs[i]` for seed i; the caller sets the parent (by index or by run id)."""
    runs = []
    for size in sizes:
        if request.side == "scratch":
            for seed_change in seeded(request, request.seeds):
                spec = run_spec(grokking.DEFAULTS, request.base, {"task": {"train_size": size}}, seed_change)
                runs.append(PlannedRun(spec=spec, role="probe", search_round=search_round))
            continue
        for parent_spec in phase1_specs:
            spec = phase_two(parent_spec, request.phase2_steps, size, request.weight_decay)
            runs.append(PlannedRun(spec=spec, role="probe", search_round=search_round))
    return runs


def plan(request: DCritSearchExperiment, max_runs: int, phase1_spec: RunSpec | None = None) -> list[PlannedRun]:
    """The phase-1 runs (ungrokking side) and round 1's probes."""
    if request.max_runs > max_runs:
        raise SpecError("max_runs", f"{request.max_runs} is over this server's limit of {max_runs} runs per experiment")
    if request.side == "scratch":
        pairs = run_spec(grokking.DEFAULTS, request.base).task.num_pairs
        check_bracket(request.low, request.high, pairs)
        phase1: list[RunSpec] = []
    else:
        phase1 = search_phase1_specs(request)
        check_bracket(request.low, request.high, phase1[0].task.num_pairs, largest=min(s.final_train_size for s in phase1))
    _, sizes = round_sizes(request.low, request.high, [], level=request.level, count=request.probes_per_round)
    if not sizes:
        raise SpecError("high", f"no integer size lies strictly between low {request.low} and high {request.high}")
    first_round = len(phase1) + len(sizes) * len(request.seeds)
    if first_round > request.max_runs:
        raise SpecError(
            "max_runs",
            f"one round needs {first_round} runs ({len(sizes)} sizes x {len(request.seeds)} seeds"
            + (f" + {len(phase1)} phase-1 runs" if phase1 else "")
            + f"), more than max_runs {request.max_runs}",
        )
    runs = [PlannedRun(spec=spec, role="phase1") for spec in phase1]
    probes = plan_search_probes(request, sizes, 1, phase1)
    if phase1:
        # Probes are ordered size by size, seed by seed within a size: seed i's parent is run i.
        probes = [probe.model_copy(update={"parent_index": i % len(phase1)}) for i, probe in enumerate(probes)]
    return runs + probes


KIND = ExperimentKind("d_crit_search", DCritSearchExperiment, plan)
