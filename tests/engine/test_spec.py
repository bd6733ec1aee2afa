"""Specs import without torch and reject every impossible run with a message naming the field."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.spec import ExperimentSpec, PhaseSpec, RunSpec, SpecError, SweepSpec, TaskSpec, log_spaced_steps

REPO = Path(__file__).resolve().parents[2]


def test_importing_spec_does_not_import_torch():
    code = "import engine.spec, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"task": {"op": "divide", "p": 25}}, "p"),
        ({"task": {"p": 11, "train_size": 121}}, "train_size"),
        (
            {
                "task": {"p": 11, "train_size": 60},
                "phases": [{"steps": 5}, {"steps": 5, "train_set": "subset", "subset_size": 61}],
            },
            "phases.1.subset_size",
        ),
        ({"task": {"op": "power"}}, "task.op"),
        ({"phases": [{"steps": 0}]}, "phases.0.steps"),
        ({"optimizer": {"lr": 1e-3, "momentum": 0.9}}, "optimizer.momentum"),
        ({"optimizer": {"eps": 0}}, "optimizer.eps"),
        ({"loss": "mse", "loss_precision": "float64"}, "loss_precision"),
        ({"loss_precision": "float16"}, "loss_precision"),
        ({"grad_filter": {"kind": "ema", "alpha": 1.0}}, "grad_filter.ema.alpha"),
        ({"grad_filter": {"kind": "ma", "window": 0}}, "grad_filter.ma.window"),
        ({"grad_filter": {"kind": "median"}}, "grad_filter"),
        ({"weight_norm": {"fixed": False}}, "weight_norm.fixed"),
        ({"optimizer": {"kind": "adamw", "muon_momentum": 0.9}}, "muon_momentum"),
        ({"optimizer": {"kind": "muon", "muon_momentum": 1.0}}, "optimizer.muon_momentum"),
        ({"weight_norm": {}}, "fixed"),
        ({"weight_norm": {"value": -1}}, "weight_norm.value"),
        ({"model": {"kind": "mlp", "init_scale": 0}}, "model.mlp.init_scale"),
        ({"model": {"kind": "toy_circuits"}, "optimizer": {"kind": "sgd"}, "weight_norm": {"fixed": True}}, "weight_norm"),
        ({"model": {"kind": "toy_circuits"}, "optimizer": {"kind": "sgd"}, "precision": "bf16-mixed"}, "precision"),
        ({"precision": "float16"}, "precision"),
        (
            {"model": {"kind": "transformer", "d_model": 1024, "d_mlp": 4096}, "grad_filter": {"kind": "ma", "window": 1000}},
            "grad_filter.window",
        ),
    ],
)
def test_invalid_spec_is_rejected_naming_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    err = info.value.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) + " " + err["msg"]
    assert field in where


def test_sweep_expands_to_grid_times_zip_times_seeds():
    spec = ExperimentSpec(
        task=TaskSpec(p=11, train_size=50),
        phases=[PhaseSpec(steps=10)],
        seeds=[0, 1],
        sweep=SweepSpec(
            grid={"optimizer.weight_decay": [0.1, 1.0, 3.0]},
            zip={"task.train_size": [40, 60], "task.data_seed": [7, 8]},
        ),
    )
    runs = spec.expand()
    assert spec.run_count() == len(runs) == 3 * 2 * 2
    assert {(r.optimizer.weight_decay, r.task.train_size, r.task.data_seed, r.seed) for r in runs} == {
        (wd, d, ds, s) for wd in (0.1, 1.0, 3.0) for d, ds in ((40, 7), (60, 8)) for s in (0, 1)
    }


def test_sweep_over_the_run_cap_is_rejected():
    spec = ExperimentSpec(seeds=list(range(10)), sweep=SweepSpec(grid={"task.data_seed": list(range(10))}))
    with pytest.raises(SpecError) as info:
        spec.expand(max_runs=99)
    assert info.value.field == "sweep"
    assert len(spec.expand(max_runs=100)) == 100


def test_parameter_count_matches_the_built_models_and_bounds_the_spec():
    from engine.model import build_model
    from engine.spec import MAX_PARAMETERS, MlpSpec, TransformerSpec, parameter_count

    specs = [
        RunSpec(),
        RunSpec(task=TaskSpec(p=31), model=MlpSpec(d_embed=40, d_hidden=70)),
        RunSpec(task=TaskSpec(op="permutation", n=4), model=TransformerSpec(d_model=64, n_heads=2, d_head=16, d_mlp=100)),
    ]
    for spec in specs:
        assert parameter_count(spec) == sum(p.numel() for p in build_model(spec).parameters())
    with pytest.raises(ValidationError, match="model: .* parameters is over the limit"):
        RunSpec(model=TransformerSpec(d_model=4096, d_mlp=16384))
    assert parameter_count(RunSpec(model=TransformerSpec(d_model=1024, d_mlp=4096))) < MAX_PARAMETERS


def test_runs_pack_by_model_and_task_and_never_exceed_the_pack_size():
    from engine.packing import pack_runs
    from engine.spec import MlpSpec, OptimizerSpec, ToyCircuitsSpec

    small = TaskSpec(p=13, train_size=40)
    specs = [
        RunSpec(task=small, seed=0),
        RunSpec(task=small.model_copy(update={"train_size": 60}), seed=1),
        RunSpec(task=TaskSpec(p=17, train_size=40)),  # another task table
        RunSpec(task=small, seed=2),
        RunSpec(task=small, model=MlpSpec()),  # another model
        RunSpec(task=small, seed=3, optimizer=OptimizerSpec(batch_size=8)),  # minibatches: alone
        RunSpec(task=small, seed=4),
        RunSpec(model=ToyCircuitsSpec(), optimizer=OptimizerSpec(kind="sgd")),
    ]
    assert pack_runs(specs, size=3) == [[0, 1, 3], [2], [4], [5], [6], [7]]
    assert pack_runs(specs, size=1) == [[i] for i in range(len(specs))]


def test_the_grokking_methods_pack_by_their_kind_and_batch_their_values():
    """Every method batches over members (tests/engine/test_ensemble.py): runs differing only in
    per-member values (eps, Grokfast's alpha and lamb, init_scale, the norm's value, Muon's
    momentum) pack together; a method's kind (its state's shape) or the loss packs apart."""
    from engine.packing import pack_key

    task = TaskSpec(p=13, train_size=40)
    together = [
        [RunSpec(task=task, optimizer={"eps": 1e-8}), RunSpec(task=task, optimizer={"eps": 1e-3}, seed=1)],
        [
            RunSpec(task=task, grad_filter={"kind": "ema"}),
            RunSpec(task=task, grad_filter={"kind": "ema", "alpha": 0.5, "lamb": 1}),
        ],
        [
            RunSpec(task=task, grad_filter={"kind": "ma", "window": 5}),
            RunSpec(task=task, grad_filter={"kind": "ma", "window": 5, "lamb": 1}),
        ],
        [
            RunSpec(task=task, weight_norm={"fixed": True}),
            RunSpec(task=task, weight_norm={"value": 3}, model={"kind": "transformer", "init_scale": 2}),
        ],
        [RunSpec(task=task, optimizer={"kind": "muon"}), RunSpec(task=task, optimizer={"kind": "muon", "muon_momentum": 0.5})],
    ]
    for pair in together:
        assert pack_key(pair[0]) == pack_key(pair[1]), pair
    apart = [
        RunSpec(task=task),
        RunSpec(task=task, loss="stablemax"),
        RunSpec(task=task, loss_precision="float64"),
        RunSpec(task=task, precision="bf16-mixed"),
        RunSpec(task=task, optimizer={"orthogonal_gradients": True}),
        RunSpec(task=task, grad_filter={"kind": "ema"}),
        RunSpec(task=task, grad_filter={"kind": "ma", "window": 5}),
        RunSpec(task=task, grad_filter={"kind": "ma", "window": 6}),  # another ring
        RunSpec(task=task, weight_norm={"fixed": True}),
        RunSpec(task=task, optimizer={"kind": "muon"}),
    ]
    assert len({pack_key(spec) for spec in apart}) == len(apart)


def test_a_log_schedule_of_a_long_run_resolves_its_first_steps_and_ends_on_the_last():
    steps = sorted(log_spaced_steps(10_000_000, 1_000))
    assert steps[0] == 0 and steps[-1] == 10_000_000 and len(steps) == len(set(steps))
    assert len(steps) == 1 + 1_000  # step 0 and exactly the points asked for
    assert steps[:101] == list(range(101))  # every one of the first steps: memorisation is early
    assert 400 <= sum(s <= 10_000 for s in steps) <= 500  # measured 462
    assert sum(s >= 1_000_000 for s in steps) >= 150  # the late jump is still resolved (180)
    spec = RunSpec(phases=[PhaseSpec(steps=10_000_000)], eval_schedule={"kind": "log", "points": 1000})
    assert spec.eval_step_count() == len(steps) and spec.resolved_eval_every is None
    assert spec.resolved_checkpoint_every == 500_000


def test_eval_every_and_eval_schedule_together_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match="eval_schedule"):
        RunSpec(eval_every=10, eval_schedule={"kind": "log", "points": 100})
    with pytest.raises(ValidationError, match="points"):
        RunSpec(eval_schedule={"kind": "log", "points": 1})
    assert RunSpec(eval_schedule={"kind": "linear", "every": 7}).resolved_eval_every == 7
