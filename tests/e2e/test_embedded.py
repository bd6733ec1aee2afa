"""The embedded default, started the way the README starts it: SQLite + filesystem broker, no servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.services import ROOT, free_port, tiny_spec, wait_for_runs, wait_http


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    data_dir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env["GROKLAB_TORCH_THREADS"] = "1"
    process = subprocess.Popen(
        [str(ROOT / "bin" / "groklab"), "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base_url}/readyz", timeout=240)
        yield process, base_url, data_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_embedded_server_trains_a_submitted_sweep(embedded: tuple[subprocess.Popen[str], str, Path]) -> None:
    process, base_url, data_dir = embedded
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/readyz").json()["checks"] == {"database": True, "broker": True}
        spec = {**tiny_spec(), "seeds": [0, 1]}
        experiment = client.post("/v1/experiments", json=spec).json()
        runs = wait_for_runs(client, experiment["run_ids"], timeout=180)
        assert {run["status"] for run in runs.values()} == {"succeeded"}
        for run_id in experiment["run_ids"]:
            series = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "train_acc"}).json()["series"]
            steps = [step for step, _ in series["train_acc"]]
            assert steps == sorted(set(steps)) and max(v for _, v in series["train_acc"]) == 1.0
    assert (data_dir / "groklab.db").exists()
    assert (data_dir / "broker").is_dir()


def test_readme_example_spec_is_accepted(embedded: tuple[subprocess.Popen[str], str, Path]) -> None:
    _, base_url, _ = embedded
    spec = json.loads((ROOT / "examples" / "tiny.json").read_text())
    response = httpx.post(f"{base_url}/v1/experiments", json=spec, timeout=30)
    assert response.status_code == 201, response.text
    run_id = response.json()["run_ids"][0]
    httpx.post(f"{base_url}/v1/runs/{run_id}/cancel", timeout=30)


def test_ctrl_c_stops_the_api_and_every_worker(embedded: tuple[subprocess.Popen[str], str, Path]) -> None:
    process, base_url, _ = embedded
    children = _children(process.pid)
    assert len(children) == 2  # one worker (the default) and the api
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "groklab is up: http://127.0.0.1:" in output and "groklab stopped." in output
    assert not any(_alive(child) for child in children)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/healthz", timeout=2)
