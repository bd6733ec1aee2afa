"""GET /v1/runs/{id}/fourier against numpy's FFT of the downloaded weights, the progress-measure
series a run logs, and the bad inputs: a step that was not kept (404 listing the kept ones), a
model or task without a Fourier view (422 naming the field)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from engine.spec import PROGRESS_METRICS
from groklab.client import ApiError, Client
from tests.services import Stack, tiny_spec, wait_for_runs

P = 13


@pytest.fixture(scope="module")
def run_id(pg_stack: Stack) -> Iterator[int]:
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        spec = tiny_spec(checkpoint_keep_every=100)
        run = http.post("/v1/experiments", json=spec).json()["run_ids"][0]
        assert wait_for_runs(http, [run], timeout=180)[run]["status"] == "succeeded"
    yield run


def test_fourier_view_matches_numpy_ffts_of_the_downloaded_weights(pg_stack: Stack, run_id: int) -> None:
    with Client(pg_stack.base_url) as client:
        model = client.load_model(run_id, step=200)
        view = client.fourier(run_id, step=200)
    assert view["step"] == 200 and view["kept_steps"] == [100, 200, 300]
    assert view["frequencies"] == list(range(1, P // 2 + 1))
    k = np.arange(1, P // 2 + 1)

    # W_E over the token axis: cos and sin of w_k t together hold 2 |X_k|^2 / P of the power
    embed = model.W_E.detach().numpy()[:-1].astype(np.float64)
    expected_embed = (2 * np.abs(np.fft.fft(embed, axis=0)[k]) ** 2 / P).sum(axis=1)
    assert np.allclose(view["embed_power"], expected_embed, rtol=1e-4)

    # logits over all pairs: the power along cos / sin(w_k (a + b - c)) is 2 |Z|^2 / P^3, Z the
    # 3-D DFT at frequencies (k, k, -k)
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((P * P,), P)], dim=1)
    with torch.no_grad():
        logits = model(tokens).double().numpy().reshape(P, P, P)
    spectrum = np.fft.fftn(logits)
    expected_logits = 2 * np.abs(spectrum[k, k, (P - k) % P]) ** 2 / P**3
    assert np.allclose(view["logit_power"], expected_logits, rtol=1e-3)
    assert view["key_frequencies"] == list(k[np.argsort(-expected_logits)][:5])


def test_a_run_logs_the_progress_measures_and_the_latest_view_agrees(pg_stack: Stack, run_id: int) -> None:
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        series = http.get(f"/v1/runs/{run_id}/metrics").json()["series"]
        latest = http.get(f"/v1/runs/{run_id}/fourier").json()
    assert set(PROGRESS_METRICS) <= set(series)
    assert [step for step, _ in series["restricted_loss"]] == [step for step, _ in series["test_loss"]]
    (last_step, top), *_ = reversed(series["key_freq_1"])
    assert latest["step"] == last_step == 300 and latest["key_frequencies"][0] == top
    assert all(value >= 0 for _, value in series["restricted_loss"])


def test_a_step_that_was_not_kept_is_404_listing_the_kept_steps(client: httpx.Client, run_id: int) -> None:
    response = client.get(f"/v1/runs/{run_id}/fourier", params={"step": 150})
    assert response.status_code == 404
    error = response.json()["errors"][0]
    assert error["field"] == "step" and "100, 200, 300" in error["message"]
    with Client(str(client.base_url)) as python_client, pytest.raises(ApiError) as raised:
        python_client.fourier(run_id, step=150)
    assert raised.value.status == 404 and "100, 200, 300" in str(raised.value)
    assert client.get(f"/v1/runs/{run_id}/fourier", params={"step": "soon"}).status_code == 422


def test_a_model_without_a_fourier_view_is_422_naming_the_run(client: httpx.Client) -> None:
    # (progress_measures asked of such a run is a 422 too: tests/api/test_bad_input.py)
    mlp = tiny_spec(model={"kind": "mlp", "d_embed": 8, "d_hidden": 16}, phases=[{"steps": 10}])
    run = client.post("/v1/experiments", json=mlp).json()["run_ids"][0]
    response = client.get(f"/v1/runs/{run}/fourier")
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "run_id"
    assert "transformer on add and subtract" in response.json()["errors"][0]["message"]
