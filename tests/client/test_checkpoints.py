"""A run's model out of groklab: kept checkpoints listed, weights downloaded as safetensors over
HTTP, loaded with client.load_model, and equal to what the worker evaluated."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import torch
from safetensors.torch import load

from engine.datasets import build_task
from engine.spec import RunSpec
from groklab.client import ApiError, Client
from groklab.checkpoint_format import decode
from groklab.settings import Settings
from groklab.store import leases
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import session_scope
from tests.client.test_client_cli import groklab
from tests.services import Stack, bearer, create_key, tiny_spec, wait_for_runs

STEPS = 300
KEEP_EVERY = 100


@pytest.fixture(scope="module")
def trained(pg_stack: Stack) -> Iterator[tuple[Client, int]]:
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        spec = tiny_spec(phases=[{"steps": STEPS}], checkpoint_keep_every=KEEP_EVERY)
        run_id = http.post("/v1/experiments", json=spec).json()["run_ids"][0]
        assert wait_for_runs(http, [run_id], timeout=180)[run_id]["status"] == "succeeded"
    with Client(pg_stack.base_url) as client:
        yield client, run_id


def test_kept_checkpoints_are_listed_with_their_sizes(trained: tuple[Client, int]) -> None:
    client, run_id = trained
    stored = client.checkpoints(run_id)
    assert [c["step"] for c in stored] == [100, 200, 300]
    assert all(c["kept"] and c["bytes"] > 0 and len(c["sha256"]) == 64 for c in stored)


def test_downloaded_model_gives_the_test_accuracy_the_worker_logged(trained: tuple[Client, int]) -> None:
    client, run_id = trained
    run = client.run(run_id)
    spec = RunSpec.model_validate(run.spec)
    table = build_task(spec.task)
    logged = {row["step"]: row["value"] for row in client.metrics(run, ["test_acc"])}
    for step in (200, None):
        model = client.load_model(run, step=step)
        with torch.no_grad():
            predictions = model(table.tokens[table.test_idx]).argmax(-1)
        recomputed = (predictions == table.labels[table.test_idx]).double().mean().item()
        assert recomputed == pytest.approx(logged[step or STEPS], abs=1e-6)  # stored in float32
    early, late = client.load_model(run, step=100), client.load_model(run)
    assert not torch.equal(early.W_E, late.W_E)


def test_weights_alone_by_default_the_whole_checkpoint_on_request(trained: tuple[Client, int]) -> None:
    client, run_id = trained
    weights = load(client.download_checkpoint(run_id, 300))
    model = client.load_model(run_id)
    assert set(weights) == set(model.state_dict())
    full = decode(client.download_checkpoint(run_id, 300, optimizer=True))
    assert full.step == 300 and full.optimizer["state"]  # AdamW's moments, as resumed from
    for name, tensor in weights.items():
        assert torch.equal(full.model[name], tensor)


def test_download_carries_an_etag_and_answers_304_to_it(pg_stack: Stack, trained: tuple[Client, int]) -> None:
    _, run_id = trained
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        first = http.get(f"/v1/runs/{run_id}/checkpoints/latest")
        assert first.status_code == 200 and first.headers["x-checkpoint-step"] == "300"
        assert first.headers["content-type"] == "application/octet-stream"
        again = http.get(f"/v1/runs/{run_id}/checkpoints/300", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        full = http.get(f"/v1/runs/{run_id}/checkpoints/300", params={"optimizer": "true"})
        assert full.headers["etag"] != first.headers["etag"]


def test_a_step_that_was_not_kept_is_404_listing_the_kept_ones_and_a_bad_step_422(
    pg_stack: Stack, trained: tuple[Client, int]
) -> None:
    client, run_id = trained
    with pytest.raises(ApiError) as missing:
        client.download_checkpoint(run_id, 150)
    assert missing.value.status == 404 and "100, 200, 300" in missing.value.detail
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        bad = http.get(f"/v1/runs/{run_id}/checkpoints/last")
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "step"
        assert http.get("/v1/runs/999999/checkpoints").status_code == 404


def test_cli_writes_the_weights_file_and_lists_the_checkpoints(pg_stack: Stack, trained: tuple[Client, int], tmp_path) -> None:
    client, run_id = trained
    out = tmp_path / "model.safetensors"
    written = groklab("checkpoint", str(run_id), "--step", "200", "-o", str(out), url=pg_stack.base_url)
    assert written.returncode == 0, written.stderr
    assert out.read_bytes() == client.download_checkpoint(run_id, 200)
    listed = groklab("checkpoint", str(run_id), url=pg_stack.base_url)
    assert listed.returncode == 0 and all(str(step) in listed.stdout for step in (100, 200, 300))


def test_another_owners_checkpoints_are_404(auth_stack: Stack) -> None:
    database_url = auth_stack.env["GROKLAB_DATABASE_URL"]
    owner, stranger = (bearer(create_key(database_url, f"ck-{uuid.uuid4().hex[:8]}")) for _ in range(2))
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as http:
        run_id = http.post("/v1/experiments", json=tiny_spec(), headers=owner).json()["run_ids"][0]
        with session_scope(database_url) as session:
            lease = leases.claim_run(session, run_id, worker="test@owner", lease_seconds=600)
        assert lease is not None
        CheckpointStore.from_settings(Settings(database_url=database_url)).put(lease, 10, b"not a model")
        assert http.get(f"/v1/runs/{run_id}/checkpoints", headers=owner).json()["checkpoints"][0]["step"] == 10
        for path in (f"/v1/runs/{run_id}/checkpoints", f"/v1/runs/{run_id}/checkpoints/10"):
            assert http.get(path, headers=stranger).status_code == 404


def test_load_model_as_transformer_lens_gives_the_engines_logits_at_eq(trained: tuple[Client, int]) -> None:
    from groklab.client.lens import HOOK_NAMES, TransformerLensView

    client, run_id = trained
    run = client.run(run_id)
    tokens = build_task(RunSpec.model_validate(run.spec).task).tokens
    view = client.load_model(run, step=200, format="transformer_lens")
    assert isinstance(view, TransformerLensView) and not view.training and view.embed.W_E.device.type == "cpu"
    with torch.no_grad():
        logits, cache = view.run_with_cache(tokens)
        difference = (logits[:, 2] - client.load_model(run, step=200)(tokens)).abs().max().item()
    assert difference <= 1e-5 and set(cache.keys()) == set(HOOK_NAMES)
    state_dict, config = client.load_model(run, format="hooked_transformer")
    assert config["d_vocab"] == 14 and config["d_vocab_out"] == 13 and config["n_heads"] == 2
    assert torch.equal(state_dict["embed.W_E"], client.load_model(run).W_E)
