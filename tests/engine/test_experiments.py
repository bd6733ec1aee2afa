"""Experiment kinds plan the paper's runs: counts, fork links, prefix specs, defaults, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from engine.experiments import (
    EfficiencyExperiment,
    ExperimentRequest,
    SweepExperiment,
    UngrokkingExperiment,
    plan_experiment,
)
from engine.spec import ExperimentSpec, PhaseSpec, RunSpec, SpecError

REQUEST = TypeAdapter(ExperimentRequest)
EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*/*.json"))


def plan(data: dict[str, Any], max_runs: int = 500) -> list[Any]:
    return plan_experiment(REQUEST.validate_python(data), max_runs)


def test_a_request_without_kind_is_the_old_sweep_and_plans_the_same_runs():
    data = {"task": {"p": 13}, "seeds": [0, 1], "sweep": {"grid": {"optimizer.weight_decay": [0.5, 1.0]}}}
    request = REQUEST.validate_python(data)
    assert isinstance(request, SweepExperiment) and request.kind == "sweep"
    expected = ExperimentSpec.model_validate(data).expand()
    assert [run.spec for run in plan_experiment(request, 500)] == expected
    assert all(run.role == "run" and run.parent_index is None for run in plan_experiment(request, 500))


def test_grokking_defaults_are_the_papers_standard_setup():
    (run,) = plan({"kind": "grokking"})
    assert run.spec.task.p == 113 and run.spec.task.resolved_train_size == 3830
    assert run.spec.optimizer.weight_decay == 1.0 and run.spec.optimizer.kind == "adamw"
    assert run.spec.model.kind == "transformer" and run.spec.model.d_model == 128


def test_grokking_crosses_sizes_weight_decays_and_seeds():
    runs = plan({"kind": "grokking", "train_sizes": [1000, 2000], "weight_decays": [0.5, 1.0, 2.0], "seeds": [3, 4]})
    assert len(runs) == 12
    combos = {(r.spec.task.resolved_train_size, r.spec.optimizer.weight_decay, r.spec.seed) for r in runs}
    assert len(combos) == 12


def test_ungrokking_defaults_are_seven_geometric_sizes_in_the_papers_range():
    request = UngrokkingExperiment(kind="ungrokking")
    sizes = request.subset_sizes
    assert len(sizes) == 7 and sizes[0] == 390 and sizes[-1] == 1494
    ratios = [b / a for a, b in zip(sizes, sizes[1:])]
    assert max(ratios) - min(ratios) < 0.01
    runs = plan_experiment(request, 500)
    assert runs[0].spec.task.p == 113
    assert len(runs) == 10 + 10 * 7


def test_ungrokking_children_fork_from_their_seeds_phase1_with_the_parent_spec_as_prefix():
    runs = plan({"kind": "ungrokking", "seeds": [0, 1], "subset_sizes": [100, 200], "weight_decays": [0.5, 1.0]})
    parents = [i for i, r in enumerate(runs) if r.role == "phase1"]
    children = [r for r in runs if r.role == "phase2"]
    assert len(parents) == 2 and len(children) == 8
    for child in children:
        parent = runs[child.parent_index]
        assert child.parent_index < runs.index(child)
        assert parent.role == "phase1" and parent.parent_index is None
        assert child.spec.seed == parent.spec.seed
        n = len(parent.spec.phases)
        assert child.spec.phases[:n] == parent.spec.phases
        assert child.spec.model_dump(exclude={"phases"}) == parent.spec.model_dump(exclude={"phases"})
        (phase2,) = child.spec.phases[n:]
        assert phase2.train_set == "subset" and phase2.weight_decay in (0.5, 1.0)
    assert {(c.spec.phases[-1].subset_size, c.spec.phases[-1].weight_decay) for c in children} == {
        (d, w) for d in (100, 200) for w in (0.5, 1.0)
    }


@pytest.mark.parametrize("kind", ["grokking", "ungrokking", "semi_grokking", "efficiency"])
def test_each_seed_of_a_kind_varies_the_data_unless_the_request_fixes_it(kind):
    extra = {"subset_sizes": [100]} if kind == "ungrokking" else {"train_sizes": [1500]} if kind == "semi_grokking" else {}
    runs = plan({"kind": kind, "seeds": [0, 1, 2], **extra})
    assert {(r.spec.seed, r.spec.task.data_seed) for r in runs} == {(0, 0), (1, 1), (2, 2)}
    fixed = plan({"kind": kind, "seeds": [0, 1, 2], "base": {"task": {"data_seed": 7}}, **extra})
    assert {r.spec.task.data_seed for r in fixed} == {7}
    chosen = plan({"kind": kind, "seeds": [0, 1, 2], "data_seeds": [4, 4, 9], **extra})
    assert {(r.spec.seed, r.spec.task.data_seed) for r in chosen} == {(0, 4), (1, 4), (2, 9)}


def test_ungrokking_from_an_existing_run_plans_only_children_naming_that_run():
    phase1 = RunSpec(seed=7, phases=[PhaseSpec(steps=123)])
    request = REQUEST.validate_python({"kind": "ungrokking", "phase1_run_id": 42, "subset_sizes": [500]})
    (child,) = plan_experiment(request, 500, phase1_spec=phase1)
    assert child.parent_index is None and child.parent_run_id == 42 and child.role == "phase2"
    assert child.spec.phases[0] == phase1.phases[0] and child.spec.seed == 7


def test_ungrokking_rejects_a_subset_larger_than_phase1s_training_set():
    with pytest.raises(SpecError) as info:
        plan({"kind": "ungrokking", "base": {"task": {"p": 13}}, "subset_sizes": [60, 100]})
    assert info.value.field == "subset_sizes"


def test_ungrokking_from_an_existing_run_takes_at_most_one_seed():
    with pytest.raises(SpecError) as info:
        plan({"kind": "ungrokking", "phase1_run_id": 1, "seeds": [0, 1]})
    assert info.value.field == "seeds"


def test_a_base_eval_schedule_replaces_the_kinds_default_cadence():
    """Every kind defaults to eval_every; a base asking for a log schedule gets it, not a 422."""
    schedule = {"kind": "log", "points": 100}
    runs = plan({"kind": "semi_grokking", "train_sizes": [700], "seeds": [0], "base": {"eval_schedule": schedule}})
    assert runs[0].spec.eval_every is None and runs[0].spec.eval_schedule.model_dump() == schedule
    with pytest.raises(SpecError, match="base.eval_schedule"):
        plan({"kind": "semi_grokking", "train_sizes": [700], "base": {"eval_every": 10, "eval_schedule": schedule}})


def test_semi_grokking_defaults_are_twenty_even_sizes_in_the_papers_range():
    runs = plan({"kind": "semi_grokking"})
    sizes = sorted({r.spec.task.resolved_train_size for r in runs})
    assert len(sizes) == 20 and sizes[0] == 1500 and sizes[-1] == 2050
    gaps = [b - a for a, b in zip(sizes, sizes[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert len(runs) == 200 and {r.spec.seed for r in runs} == set(range(10))


def test_efficiency_plans_random_label_memorisers_and_generalisers_per_weight_decay():
    request = EfficiencyExperiment(
        kind="efficiency", memorise_sizes=[100, 200], generalise_sizes=[3000], weight_decays=[0.5, 1.0], seeds=[0]
    )
    runs = plan_experiment(request, 500)
    memorise = [r for r in runs if r.role == "memorise"]
    generalise = [r for r in runs if r.role == "generalise"]
    assert len(memorise) == 4 and len(generalise) == 2
    assert all(r.spec.task.random_labels for r in memorise)
    assert not any(r.spec.task.random_labels for r in generalise)


def test_toy_uses_the_papers_constants_and_names_each_ablation():
    runs = {r.role: r.spec for r in plan({"kind": "toy"})}
    assert set(runs) == {"full", "gen_less_efficient", "no_speed_difference", "no_weight_decay"}
    full = runs["full"]
    assert full.model.kind == "toy_circuits" and full.optimizer.kind == "sgd"
    assert full.optimizer.lr == 0.01 and full.optimizer.weight_decay == 0.005
    assert runs["no_weight_decay"].optimizer.weight_decay == 0
    assert runs["gen_less_efficient"].model.gen_norm_factor > full.model.mem_norm_factor
    assert runs["no_speed_difference"].model.gen_init == full.model.mem_init


def test_base_overrides_merge_deeply_into_the_defaults():
    (run,) = plan({"kind": "grokking", "base": {"task": {"p": 47}, "optimizer": {"lr": 0.003}}})
    assert run.spec.task.p == 47 and run.spec.task.train_fraction == 0.3
    assert run.spec.optimizer.lr == 0.003 and run.spec.optimizer.betas == (0.9, 0.98)


def test_a_model_change_without_kind_changes_the_default_transformer():
    # An overlay or base of {"model": {"init_scale": 8}} (Omnigrok's large init) merged over
    # defaults that name no model: it is the transformer with that change, not a missing kind.
    runs = plan({"kind": "method_comparison", "method": {"model": {"init_scale": 8.0}}, "seeds": [0]})
    scales = sorted((run.spec.model.kind, run.spec.model.init_scale) for run in runs)
    assert scales[0] == ("transformer", 1.0) and scales[-1] == ("transformer", 8.0)
    (run,) = plan({"kind": "grokking", "base": {"model": {"d_mlp": 64}}})
    assert run.spec.model.kind == "transformer" and run.spec.model.d_mlp == 64
    with pytest.raises(SpecError, match="base.model"):
        plan({"kind": "grokking", "base": {"model": {"kind": "cnn"}}})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "grokking", "base": {"task": {"p": 1}}}, "base.task.p"),
        ({"kind": "grokking", "base": {"optimiser": {}}}, "base.optimiser"),
        ({"kind": "grokking", "base": {"seed": 3}}, "base.seed"),
        ({"kind": "grokking", "seeds": list(range(11))}, "seeds"),
        ({"kind": "semi_grokking", "seeds": list(range(11))}, "train_sizes"),
        ({"kind": "ungrokking"}, "subset_sizes"),
        ({"kind": "efficiency", "seeds": list(range(11))}, "memorise_sizes"),
        ({"kind": "toy", "ablations": ["full", "full"]}, "ablations"),
        ({"kind": "grokking", "seeds": [0, 1], "data_seeds": [5]}, "data_seeds"),
        ({"sweep": {"grid": {"seed": list(range(11))}}}, "sweep"),
    ],
)
def test_bad_or_oversized_requests_raise_a_spec_error_naming_the_field(data, field):
    with pytest.raises(SpecError) as info:
        plan(data, max_runs=10)
    assert info.value.field == field


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "ungrokking", "subset_sizes": []},
        {"kind": "ungrokking", "weight_decays": []},
        {"kind": "grokking", "seeds": []},
        {"kind": "efficiency", "memorise_sizes": []},
        {"kind": "toy", "ablations": ["bigger"]},
        {"kind": "nonsense"},
    ],
)
def test_empty_lists_and_unknown_names_fail_validation(data):
    with pytest.raises(ValidationError):
        REQUEST.validate_python(data)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_example_plans(path: Path):
    runs = plan(json.loads(path.read_text()))
    assert runs
    if path.parent.name == "ci":
        # CI examples stay small: a few runs at P <= 47 (or the closed-form toy); efficiency's
        # weight-decay sweep at six sizes is the largest, 18 runs of 2,000 steps.
        assert len(runs) <= 18
        assert all(r.spec.model.kind == "toy_circuits" or r.spec.task.p <= 47 for r in runs)
        # Evaluated at least every 50 steps, or on a log schedule of at least 100 points.
        assert all(
            (r.spec.eval_every is not None and r.spec.eval_every <= 50)
            or (r.spec.eval_schedule is not None and r.spec.eval_schedule.kind == "log" and r.spec.eval_schedule.points >= 100)
            for r in runs
        )


def test_the_smoke_scale_takes_seconds_and_the_ci_scale_fits_two_cores():
    """`groklab reproduce`'s scales: smoke is P=13 with short runs; ci is about 49 runs at P=47
    (measured before the method comparison's 16 runs joined it: the other 33 finish in under 30
    minutes on two cores, README)."""
    from groklab.client.reproduce import load_specs

    smoke = [run for spec in load_specs("smoke", None).values() for run in plan(spec)]
    assert all(r.spec.model.kind == "toy_circuits" or (r.spec.task.p <= 13 and r.spec.total_steps <= 400) for r in smoke)
    ci = [run for spec in load_specs("ci", None).values() for run in plan(spec)]
    assert len(ci) <= 52


def test_every_kind_has_a_ci_and_a_paper_example():
    kinds = {"grokking", "ungrokking", "semi_grokking", "efficiency", "sweep", "toy", "d_crit_search", "method_comparison"}
    for folder in ("ci", "paper"):
        found = {json.loads(p.read_text())["kind"] for p in EXAMPLES if p.parent.name == folder}
        assert found == kinds, folder
    # and examples/ci/long_run.json (a sweep), and the seven of reproduce's smoke scale
    assert len(EXAMPLES) == 8 + 9 + 7
