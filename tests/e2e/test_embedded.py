"""The embedded default, started the way the README starts it: SQLite + filesystem broker, no servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.services import ROOT, free_port, tiny_spec, wait_for_runs, wait_http, wait_until

LEASE_SECONDS = 120
"""Long, so that only `groklab up` handing a dead worker's runs back can re-queue them quickly."""


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


@dataclass
class Output:
    """Everything `groklab up` and its children print, read as it comes so the pipe never fills."""

    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], str, Path, Output]]:
    data_dir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    # No server setting leaks in; GROKLAB_VENV (bin/groklab's own) picks an existing virtualenv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_") or k == "GROKLAB_VENV"}
    env["GROKLAB_TORCH_THREADS"] = "1"
    env["GROKLAB_LEASE_SECONDS"] = str(LEASE_SECONDS)
    # Pinned as on a one-GPU host (a CPU host ignores it), so the tests see each worker's GPU.
    env["GROKLAB_GPUS"] = "0"
    process = subprocess.Popen(
        [str(ROOT / "bin" / "groklab"), "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = Output()
    output.reader = threading.Thread(target=lambda: output.lines.extend(process.stdout), daemon=True)
    output.reader.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base_url}/readyz", timeout=240)
        yield process, base_url, data_dir, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_embedded_server_trains_a_submitted_sweep(embedded: tuple[subprocess.Popen[str], str, Path, Output]) -> None:
    process, base_url, data_dir, _ = embedded
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


def test_readme_example_spec_is_accepted(embedded: tuple[subprocess.Popen[str], str, Path, Output]) -> None:
    _, base_url, _, _ = embedded
    spec = json.loads((ROOT / "examples" / "tiny.json").read_text())
    response = httpx.post(f"{base_url}/v1/experiments", json=spec, timeout=30)
    assert response.status_code == 201, response.text
    run_id = response.json()["run_ids"][0]
    httpx.post(f"{base_url}/v1/runs/{run_id}/cancel", timeout=30)


def _worker_pid(supervisor_pid: int) -> int:
    (pid,) = [p for p in _children(supervisor_pid) if b"celery" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def _visible_gpus(pid: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES a process was started with."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name == b"CUDA_VISIBLE_DEVICES":
            return value.decode()
    return None


def test_worker_killed_mid_run_is_replaced_and_its_run_resumes_from_its_checkpoint_within_seconds(
    embedded: tuple[subprocess.Popen[str], str, Path, Output],
) -> None:
    process, base_url, _, output = embedded
    spec = {**tiny_spec(), "phases": [{"steps": 3000}], "eval_every": 20}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        run_id = client.post("/v1/experiments", json=spec).json()["run_ids"][0]

        def stored_steps() -> list[int]:
            return [c["step"] for c in client.get(f"/v1/runs/{run_id}/checkpoints").json()["checkpoints"]]

        wait_until(
            lambda: (
                (run := client.get(f"/v1/runs/{run_id}").json())["status"] == "running" and run["step"] >= 600 and stored_steps()
            ),
            timeout=120,
        )
        old_worker = _worker_pid(process.pid)
        assert _visible_gpus(old_worker) == "0"
        os.kill(old_worker, signal.SIGKILL)
        killed_at = time.monotonic()
        # The dead worker can write no newer checkpoint: this is the one the run resumes from.
        resume_step = stored_steps()[-1]
        assert resume_step > 0

        steps_after_resume = []
        while True:  # the api answers throughout; every request here would raise otherwise
            run = client.get(f"/v1/runs/{run_id}").json()
            if run["attempts"] == 2 and run["status"] in ("running", "succeeded"):
                steps_after_resume.append(run["step"])
                if run["status"] == "running" and len(steps_after_resume) == 1:
                    resumed_after = time.monotonic() - killed_at
                if run["status"] == "succeeded":
                    break
            assert time.monotonic() - killed_at < 180, run
            time.sleep(0.1)
        assert _worker_pid(process.pid) != old_worker and process.poll() is None
        assert _visible_gpus(_worker_pid(process.pid)) == "0"  # the replacement keeps its GPU

    print(f"killed at step >= 600, resumed from step {resume_step} {resumed_after:.1f} s after the kill")
    assert resumed_after < LEASE_SECONDS / 4, resumed_after
    assert min(steps_after_resume) >= resume_step  # it continued, it did not start over
    assert [e["status"] for e in run["events"]] == ["queued", "running", "queued", "running", "running", "succeeded"]
    assert run["events"][4]["message"] == f"resuming from the checkpoint at step {resume_step}"
    requeue = run["events"][2]["message"]
    assert "died" in requeue and "re-queued" in requeue, requeue
    assert f"handed back runs [{run_id}]" in output.text()
    series = httpx.get(f"{base_url}/v1/runs/{run_id}/metrics", params={"names": "test_acc"}).json()["series"]
    assert [step for step, _ in series["test_acc"]] == list(range(0, 3001, 20))  # no gap, no duplicate


def test_ctrl_c_stops_the_api_and_every_worker(embedded: tuple[subprocess.Popen[str], str, Path, Output]) -> None:
    process, base_url, _, captured = embedded
    children = _children(process.pid)
    assert len(children) == 2  # one worker (the default) and the api
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert captured.reader is not None
    captured.reader.join(timeout=10)
    output = captured.text()
    assert process.returncode == 0, output
    assert "groklab is up: http://127.0.0.1:" in output and "groklab stopped." in output
    assert "1 worker(s) on GPUs 0," in output
    assert not any(_alive(child) for child in children)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/healthz", timeout=2)
