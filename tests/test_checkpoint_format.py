"""A run's checkpoints through the checkpoint store: the safetensors codec is exact, and a run
stopped on one worker and resumed under a new lease ends with an uninterrupted run's series."""

from __future__ import annotations

import pytest
import torch

from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec, TransformerSpec
from engine.train import train_run
from groklab.checkpoint_format import RunCheckpoints, decode, encode, model_weights, read_metadata
from groklab.settings import Settings
from groklab.store import leases
from groklab.store.checkpoint_store import CheckpointFenced, CheckpointStore
from groklab.store.database import session_scope
from tests.store.test_leases import parent_and_child

SPEC = RunSpec(
    task=TaskSpec(p=11, train_size=60),
    model=TransformerSpec(d_model=16, n_heads=2, d_head=8, d_mlp=32),
    phases=[PhaseSpec(steps=60)],
    eval_every=5,
    checkpoint_every=10,
    device="cpu",
)


def _claim(url: str, run_id: int, worker: str) -> leases.Lease:
    with session_scope(url) as session:
        lease = leases.claim_run(session, run_id, worker=worker, lease_seconds=600)
    assert lease is not None
    return lease


def test_resumed_under_a_new_lease_the_series_equal_an_uninterrupted_run(empty_database_url: str) -> None:
    run_id, _ = parent_and_child(empty_database_url)
    store = CheckpointStore.from_settings(Settings(database_url=empty_database_url))
    first_lease = _claim(empty_database_url, run_id, "a@host")
    first = MemorySink()
    result = train_run(
        SPEC, first, checkpoint=RunCheckpoints(store, run_id, first_lease), should_stop=lambda: first.last_step >= 23
    )
    assert result.stopped
    with session_scope(empty_database_url) as session:
        assert leases.release_to_queue(session, first_lease, reason="test: moved to another worker")
    assert [c.step for c in store.list_checkpoints(run_id)] == [result.final_step]  # pruned to the latest

    second = MemorySink()
    checkpoints = RunCheckpoints(store, run_id, _claim(empty_database_url, run_id, "b@host"))
    train_run(SPEC, second, checkpoint=checkpoints)
    # Resumed, not started again: the second worker logged nothing up to the stop.
    assert min(step for points in second.series.values() for step in points) > result.final_step > 0

    undisturbed = MemorySink()
    train_run(SPEC, undisturbed)
    for name, points in undisturbed.series.items():
        resumed = {**first.series.get(name, {}), **second.series.get(name, {})}
        assert resumed == pytest.approx(points, abs=1e-6), name

    # The first worker's lease was fenced off: it can write nothing any more.
    with pytest.raises(CheckpointFenced):
        RunCheckpoints(store, run_id, first_lease).save(checkpoints.load())


def test_the_codec_round_trips_every_field_and_cuts_out_the_weights(tmp_path) -> None:
    train_run(SPEC.model_copy(update={"phases": [PhaseSpec(steps=7)]}), MemorySink(), checkpoint=tmp_path)
    from engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.optimizer["state"]
    data = encode(ckpt)
    again = decode(data)
    assert (again.step, again.phase, again.data_key) == (ckpt.step, ckpt.phase, ckpt.data_key)
    assert torch.equal(again.train_idx, ckpt.train_idx) and torch.equal(again.batch_rng, ckpt.batch_rng)
    assert again.model.keys() == ckpt.model.keys()
    assert all(torch.equal(again.model[k], ckpt.model[k]) for k in ckpt.model)
    assert again.optimizer["param_groups"][0]["betas"] == list(ckpt.optimizer["param_groups"][0]["betas"])
    for i, state in ckpt.optimizer["state"].items():
        assert all(torch.equal(again.optimizer["state"][i][k], v) for k, v in state.items())
    from safetensors.numpy import load

    weights = load(model_weights(data))
    assert weights.keys() == ckpt.model.keys()
    assert read_metadata(model_weights(data))["step"] == "7"


def test_the_methods_state_survives_the_codec_and_resumes_exactly(tmp_path) -> None:
    """Muon's and AdamW's state dicts and Grokfast's window, nested in the optimizer's entry."""
    from engine.checkpoint import CheckpointFolder

    methods = {"phases": [{"steps": 14}], "grad_filter": {"kind": "ma", "window": 4}, "optimizer": {"kind": "muon"}}
    spec = RunSpec.model_validate({**SPEC.model_dump(), **methods})
    straight = MemorySink()
    train_run(spec, straight)
    first = MemorySink()
    assert train_run(spec, first, checkpoint=tmp_path / "a", should_stop=lambda: first.last_step >= 7).stopped
    ckpt = CheckpointFolder(tmp_path / "a").load()
    assert ckpt is not None and ckpt.optimizer["grad_filter"]["steps"] == 7
    CheckpointFolder(tmp_path / "b").save(decode(encode(ckpt)))
    second = MemorySink()
    train_run(spec, second, checkpoint=tmp_path / "b")
    for name, points in straight.series.items():
        assert {**first.series.get(name, {}), **second.series.get(name, {})} == pytest.approx(points, abs=1e-6), name
