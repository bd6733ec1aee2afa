"""Experiment kinds of Varma et al. (2023), each planned into runs, some forked from others.

A request is one of several models told apart by `kind`; a request without `kind` is the generic
sweep (the plain `ExperimentSpec`), so a plain spec with seeds and a sweep needs no tag.
`plan_experiment` turns any of them into `PlannedRun`s. A run with a `parent_index` continues from the final state of the run at
that index: its spec is the parent's with more phases appended, so the engine can resume it from
the parent's last checkpoint and the phase-1 part is trained once per seed, not once per child
(the lifecycle of such a fork on the server: groklab/forks.py).

Every kind starts from the paper's setup (docs/paper.md); `base` holds RunSpec fields deep-merged
over the kind's defaults, so any of them (task, model, optimizer, phases, eval_every...) can change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from engine.search import check_bracket, round_sizes
from engine.spec import ExperimentSpec, PhaseSpec, RunSpec, SpecError, StrictModel

Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1000)]
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=1000)]
WeightDecays = Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(min_length=1, max_length=100)]
Name = Annotated[str, Field(min_length=1, max_length=200)] | None


def geometric_sizes(low: int, high: int, count: int) -> list[int]:
    """`count` integers spaced geometrically from low to high, both ends included."""
    if count == 1:
        return [low]
    return [round(low * (high / low) ** (i / (count - 1))) for i in range(count)]


def even_sizes(low: int, high: int, count: int) -> list[int]:
    """`count` integers spaced evenly from low to high, both ends included."""
    if count == 1:
        return [low]
    return [round(low + (high - low) * i / (count - 1)) for i in range(count)]


# The paper's ungrokking sizes (Fig. 7) and the semi-grokking range (Section 5).
UNGROKKING_SUBSET_SIZES = geometric_sizes(390, 1494, 7)
SEMI_GROKKING_SIZES = even_sizes(1500, 2050, 20)


class PlannedRun(BaseModel):
    """One run to create; a fork continues from its parent's final state."""

    model_config = ConfigDict(frozen=True)

    spec: RunSpec
    role: str = "run"
    search_round: int | None = Field(None, description="A d_crit_search probe's round (1, 2, ...).")
    parent_index: int | None = Field(
        None, description="Index, in the planned list, of the run whose final state this one continues."
    )
    parent_run_id: int | None = Field(
        None, description="An existing run of this server whose final state this one continues."
    )


class _KindBase(StrictModel):
    name: Name = None
    base: dict[str, Any] = Field(
        {}, description="RunSpec fields deep-merged over this kind's defaults (e.g. task.p, phases)."
    )
    data_seeds: Seeds | None = Field(
        None,
        description="The data seed (training split, subsets, label noise) of each of `seeds`, in "
        "order; by default each run's data seed is its seed, unless base sets task.data_seed.",
    )


class SweepExperiment(ExperimentSpec):
    """The generic form: one spec, expanded over seeds and a grid/zip sweep."""

    kind: Literal["sweep"] = "sweep"


class GrokkingExperiment(_KindBase):
    """Train from scratch on D (default P=113, D=3,830, wd 1): memorise, then generalise late."""

    kind: Literal["grokking"]
    seeds: Seeds = [0]
    train_sizes: Sizes | None = Field(None, description="Several D; default the base's task size.")
    weight_decays: WeightDecays | None = Field(None, description="Several weight decays.")


class UngrokkingExperiment(_KindBase):
    """Grok on a large D once per seed (phase 1), then continue on each smaller D' (phase 2)."""

    kind: Literal["ungrokking"]
    seeds: Seeds | None = Field(
        None, description="Default 0..9; with phase1_run_id at most one (that run's own seed is kept)."
    )
    subset_sizes: Sizes = Field(
        UNGROKKING_SUBSET_SIZES, description="D' values; each must not exceed phase 1's D."
    )
    weight_decays: WeightDecays = Field([1.0], description="Phase-2 weight decays.")
    phase2_steps: Annotated[int, Field(ge=1, le=100_000_000)] = 10_000
    phase2_reset_optimizer: bool = False
    phase1_run_id: Annotated[int, Field(ge=1)] | None = Field(
        None, description="A finished run of this server to continue instead of training phase 1."
    )


class SemiGrokkingExperiment(_KindBase):
    """Long runs at sizes near D_crit, where generalisation may stop at partial test accuracy."""

    kind: Literal["semi_grokking"]
    seeds: Seeds = list(range(10))
    train_sizes: Sizes = SEMI_GROKKING_SIZES


class EfficiencyExperiment(_KindBase):
    """Parameter norm of each circuit alone: random labels (C_mem) and large D (C_gen)."""

    kind: Literal["efficiency"]
    seeds: Seeds = [0]
    memorise_sizes: Sizes = Field(
        [250, 500, 1000, 2000], description="D for the random-label (memorisation-only) runs."
    )
    generalise_sizes: Sizes = Field(
        [3830, 5000, 6384], description="D for the generalising runs (large enough to generalise)."
    )
    weight_decays: WeightDecays = [0.3, 1.0, 3.0]


ToyAblation = Literal["full", "gen_less_efficient", "no_speed_difference", "no_weight_decay"]

# What each ablation changes in the toy model (Section 3): a less efficient C_gen never wins, equal
# learning speeds remove the delay, no weight decay never undoes memorisation.
TOY_ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "gen_less_efficient": {"model": {"gen_norm_factor": 3.0}},
    "no_speed_difference": {"model": {"gen_init": [0.0, 1.0]}},
    "no_weight_decay": {"optimizer": {"weight_decay": 0.0}},
}


class ToyExperiment(_KindBase):
    """The Section 3 toy model (two lookup-table circuits) and its ablations, one run each."""

    kind: Literal["toy"]
    ablations: Annotated[list[ToyAblation], Field(min_length=1, max_length=4)] = list(TOY_ABLATIONS)


class DCritSearchExperiment(_KindBase):
    """Find D_crit adaptively (engine/search.py): rounds of probes that narrow a bracket in D."""

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
    max_runs: Annotated[int, Field(ge=1)] = Field(
        60, description="At most this many runs in all (phase-1 runs included)."
    )
    weight_decay: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="ungrokking side: phase 2's weight decay (default phase 1's)."
    )
    phase2_steps: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        10_000, description="ungrokking side: steps of each phase-2 probe."
    )


def _kind_of(value: Any) -> str:
    # No 'kind' means the generic sweep, the one form that needs no tag.
    if isinstance(value, dict):
        return value.get("kind", "sweep")
    return getattr(value, "kind", "sweep")


ExperimentRequest = Annotated[
    Annotated[SweepExperiment, Tag("sweep")]
    | Annotated[GrokkingExperiment, Tag("grokking")]
    | Annotated[UngrokkingExperiment, Tag("ungrokking")]
    | Annotated[SemiGrokkingExperiment, Tag("semi_grokking")]
    | Annotated[EfficiencyExperiment, Tag("efficiency")]
    | Annotated[ToyExperiment, Tag("toy")]
    | Annotated[DCritSearchExperiment, Tag("d_crit_search")],
    Discriminator(_kind_of),
]

# Defaults per kind, as RunSpec fields; `base` is merged over them.
_GROKKING_DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113, "train_fraction": 0.3},  # D = 3,830 at P = 113
    "phases": [{"steps": 20_000}],
    "eval_every": 50,
}
_UNGROKKING_DEFAULTS: dict[str, Any] = {
    # Half the pairs generalises within ~1k steps at P=113; phase 1 leaves ample margin.
    "task": {"op": "add", "p": 113, "train_fraction": 0.5},
    "phases": [{"steps": 5_000}],
    "eval_every": 50,
}
_SEMI_GROKKING_DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113},
    "phases": [{"steps": 100_000}],
    "eval_every": 200,
}
_EFFICIENCY_DEFAULTS: dict[str, Any] = {
    "task": {"op": "add", "p": 113},
    "phases": [{"steps": 20_000}],
    "eval_every": 50,
}
_TOY_DEFAULTS: dict[str, Any] = {
    "model": {"kind": "toy_circuits"},
    "optimizer": {"kind": "sgd", "lr": 0.01, "weight_decay": 0.005, "warmup_steps": 0},
    "phases": [{"steps": 20_000}],
    "eval_every": 10,
}


def deep_merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `defaults`; nested dicts merge, everything else (lists too) replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _run_spec(defaults: dict[str, Any], base: dict[str, Any], *changes: dict[str, Any]) -> RunSpec:
    """The validated spec of defaults <- base <- changes; errors name the field under `base`."""
    if "seed" in base:
        raise SpecError("base.seed", "set the seeds with the experiment's 'seeds' list")
    if "eval_schedule" in base and "eval_every" not in base:
        # The two are one choice: a base that asks for a schedule replaces the kind's default
        # cadence rather than contradicting it.
        defaults = {key: value for key, value in defaults.items() if key != "eval_every"}
    data = deep_merge(defaults, base)
    for change in changes:
        data = deep_merge(data, change)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError.of(exc, under="base") from exc


def _seeded(request: _KindBase, seeds: list[int]) -> list[dict[str, Any]]:
    """The spec change of each seed: its model seed and, so that the seeds' spread covers the
    data as well as the initialisation, its data seed (the seed itself unless the request fixes
    base.task.data_seed or gives data_seeds)."""
    if request.data_seeds is not None:
        if len(request.data_seeds) != len(seeds):
            raise SpecError("data_seeds", f"give one data seed per seed ({len(seeds)}), not {len(request.data_seeds)}")
        return [{"seed": seed, "task": {"data_seed": data}} for seed, data in zip(seeds, request.data_seeds)]
    if "data_seed" in request.base.get("task", {}):
        return [{"seed": seed} for seed in seeds]
    return [{"seed": seed, "task": {"data_seed": seed}} for seed in seeds]


def _check_cap(count: int, max_runs: int, field: str) -> None:
    if count > max_runs:
        raise SpecError(field, f"the experiment plans {count} runs, over the limit of {max_runs}")


def plan_experiment(
    request: BaseModel, max_runs: int, *, phase1_spec: RunSpec | None = None
) -> list[PlannedRun]:
    """Every run of the experiment in creation order (a parent before its children).

    `phase1_spec` is the spec of the run named by an ungrokking request's `phase1_run_id`; the
    service reads it from its store so the phase-2 children extend exactly what that run trained.
    """
    if isinstance(request, SweepExperiment):
        # ExperimentSpec.expand copies every field but its own into the run specs, so the sweep
        # expands without the 'kind' tag it does not know.
        plain = ExperimentSpec.model_validate(request.model_dump(exclude={"kind"}))
        return [PlannedRun(spec=spec) for spec in plain.expand(max_runs=max_runs)]
    if isinstance(request, GrokkingExperiment):
        return _plan_grokking(request, max_runs)
    if isinstance(request, UngrokkingExperiment):
        return _plan_ungrokking(request, max_runs, phase1_spec)
    if isinstance(request, SemiGrokkingExperiment):
        return _plan_semi_grokking(request, max_runs)
    if isinstance(request, EfficiencyExperiment):
        return _plan_efficiency(request, max_runs)
    if isinstance(request, ToyExperiment):
        return _plan_toy(request, max_runs)
    if isinstance(request, DCritSearchExperiment):
        return plan_search_start(request, max_runs)
    raise TypeError(f"not an experiment request: {type(request).__name__}")


def _plan_grokking(request: GrokkingExperiment, max_runs: int) -> list[PlannedRun]:
    sizes: list[int | None] = list(request.train_sizes or [None])
    decays: list[float | None] = list(request.weight_decays or [None])
    _check_cap(len(sizes) * len(decays) * len(request.seeds), max_runs, "seeds")
    runs = []
    for size in sizes:
        for decay in decays:
            change: dict[str, Any] = {}
            if size is not None:
                change["task"] = {"train_size": size}
            if decay is not None:
                change["optimizer"] = {"weight_decay": decay}
            for seeded in _seeded(request, request.seeds):
                spec = _run_spec(_GROKKING_DEFAULTS, request.base, change, seeded)
                runs.append(PlannedRun(spec=spec))
    return runs


def _plan_ungrokking(
    request: UngrokkingExperiment, max_runs: int, phase1_spec: RunSpec | None
) -> list[PlannedRun]:
    external = request.phase1_run_id is not None
    if external and request.seeds is not None and len(request.seeds) > 1:
        raise SpecError("seeds", "an existing phase-1 run is one seed; give one seed or none")
    seeds = request.seeds or ([0] if external else list(range(10)))
    children_per_seed = len(request.subset_sizes) * len(request.weight_decays)
    parents = 0 if external else len(seeds)
    _check_cap(parents + children_per_seed * len(seeds), max_runs, "subset_sizes")

    runs: list[PlannedRun] = []
    for seeded in _seeded(request, seeds):
        if external and phase1_spec is not None:
            parent_spec = phase1_spec
        else:
            parent_spec = _run_spec(_UNGROKKING_DEFAULTS, request.base, seeded)
        phase1_size = parent_spec.final_train_size
        too_big = [d for d in request.subset_sizes if d > phase1_size]
        if too_big:
            raise SpecError(
                "subset_sizes",
                f"D' {too_big} larger than phase 1's training set of {phase1_size}",
            )
        parent_index = None
        if not external:
            parent_index = len(runs)
            runs.append(PlannedRun(spec=parent_spec, role="phase1"))
        for size in request.subset_sizes:
            for decay in request.weight_decays:
                phase2 = _phase_two(
                    parent_spec, request.phase2_steps, size, decay, reset_optimizer=request.phase2_reset_optimizer
                )
                runs.append(
                    PlannedRun(
                        spec=phase2,
                        role="phase2",
                        parent_index=parent_index,
                        parent_run_id=request.phase1_run_id,
                    )
                )
    return runs


def _phase_two(
    parent: RunSpec, steps: int, subset_size: int, weight_decay: float | None, *, reset_optimizer: bool = False
) -> RunSpec:
    """The parent's spec with a phase on a subset D' appended: a fork that continues its final state."""
    phase = PhaseSpec(
        steps=steps, train_set="subset", subset_size=subset_size, weight_decay=weight_decay,
        reset_optimizer=reset_optimizer,
    )  # fmt: skip
    return RunSpec.model_validate(parent.model_copy(update={"phases": [*parent.phases, phase]}).model_dump())


def _plan_semi_grokking(request: SemiGrokkingExperiment, max_runs: int) -> list[PlannedRun]:
    _check_cap(len(request.train_sizes) * len(request.seeds), max_runs, "train_sizes")
    return [
        PlannedRun(spec=_run_spec(_SEMI_GROKKING_DEFAULTS, request.base, {"task": {"train_size": size}}, seeded))
        for size in request.train_sizes
        for seeded in _seeded(request, request.seeds)
    ]


def _plan_efficiency(request: EfficiencyExperiment, max_runs: int) -> list[PlannedRun]:
    per_setting = len(request.weight_decays) * len(request.seeds)
    count = (len(request.memorise_sizes) + len(request.generalise_sizes)) * per_setting
    _check_cap(count, max_runs, "memorise_sizes")
    groups = [("memorise", True, request.memorise_sizes), ("generalise", False, request.generalise_sizes)]
    runs = []
    for role, random_labels, sizes in groups:
        for size in sizes:
            for decay in request.weight_decays:
                for seeded in _seeded(request, request.seeds):
                    change = {"task": {"train_size": size, "random_labels": random_labels}, "optimizer": {"weight_decay": decay}}
                    runs.append(PlannedRun(spec=_run_spec(_EFFICIENCY_DEFAULTS, request.base, change, seeded), role=role))
    return runs


def _plan_toy(request: ToyExperiment, max_runs: int) -> list[PlannedRun]:
    if len(set(request.ablations)) != len(request.ablations):
        raise SpecError("ablations", "each ablation may appear once")
    _check_cap(len(request.ablations), max_runs, "ablations")
    return [
        PlannedRun(spec=_run_spec(_TOY_DEFAULTS, request.base, TOY_ABLATIONS[name]), role=name)
        for name in request.ablations
    ]


def search_phase1_specs(request: DCritSearchExperiment) -> list[RunSpec]:
    """The ungrokking side's phase-1 run of each seed (the ungrokking kind's defaults)."""
    return [_run_spec(_UNGROKKING_DEFAULTS, request.base, seeded) for seeded in _seeded(request, request.seeds)]


def plan_search_probes(
    request: DCritSearchExperiment, sizes: list[int], search_round: int, phase1_specs: list[RunSpec]
) -> list[PlannedRun]:
    """One probe per size and seed. On the ungrokking side each continues its seed's phase-1 run,
    `phase1_specs[i]` for seed i; the caller sets the parent (by index or by run id)."""
    runs = []
    for size in sizes:
        if request.side == "scratch":
            for seeded in _seeded(request, request.seeds):
                spec = _run_spec(_GROKKING_DEFAULTS, request.base, {"task": {"train_size": size}}, seeded)
                runs.append(PlannedRun(spec=spec, role="probe", search_round=search_round))
            continue
        for parent_spec in phase1_specs:
            spec = _phase_two(parent_spec, request.phase2_steps, size, request.weight_decay)
            runs.append(PlannedRun(spec=spec, role="probe", search_round=search_round))
    return runs


def plan_search_start(request: DCritSearchExperiment, max_runs: int) -> list[PlannedRun]:
    """The phase-1 runs (ungrokking side) and round 1's probes; later rounds are planned by the
    server as rounds finish (groklab/search.py)."""
    if request.max_runs > max_runs:
        raise SpecError("max_runs", f"{request.max_runs} is over this server's limit of {max_runs} runs per experiment")
    if request.side == "scratch":
        pairs = _run_spec(_GROKKING_DEFAULTS, request.base).task.num_pairs
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
            "max_runs", f"one round needs {first_round} runs ({len(sizes)} sizes x {len(request.seeds)} seeds"
            + (f" + {len(phase1)} phase-1 runs" if phase1 else "") + f"), more than max_runs {request.max_runs}"
        )
    runs = [PlannedRun(spec=spec, role="phase1") for spec in phase1]
    probes = plan_search_probes(request, sizes, 1, phase1)
    if phase1:
        # Probes are ordered size by size, seed by seed within a size: seed i's parent is run i.
        probes = [probe.model_copy(update={"parent_index": i % len(phase1)}) for i, probe in enumerate(probes)]
    return runs + probes
