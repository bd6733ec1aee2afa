"""The Python client and the `groklab` client commands against the real api + worker stack."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from groklab.client import ApiError, Client, ServerUnreachable, Unauthorized
from tests.services import ROOT, Stack, create_key, free_port, tiny_spec, wait_for_runs


def groklab(*args: str, url: str, api_key: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env["GROKLAB_URL"] = url
    if api_key is not None:
        env["GROKLAB_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-m", "groklab.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_client_and_groklab_help_import_none_of_the_server_or_torch() -> None:
    # `groklab --help` and `from groklab.client import Client` load groklab/client/ and the CLI's
    # parser only: a client command starts in a fraction of a second on a laptop with no torch.
    code = (
        "import sys\nfrom groklab.client import Client\nfrom groklab.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "heavy = {'torch', 'sqlalchemy', 'fastapi', 'celery', 'pandas', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "reproduce" in result.stdout and "submit" in result.stdout


def test_client_submits_waits_and_reads_the_same_series_and_analysis_as_the_api(pg_stack: Stack, client: httpx.Client) -> None:
    with Client(pg_stack.base_url) as groklab_client:
        experiment = groklab_client.submit(tiny_spec(seeds=[0, 1]))
        runs = groklab_client.wait(experiment, progress=False, timeout=180)
        assert [run.status for run in runs] == ["succeeded", "succeeded"]
        run = runs[0]

        rows = groklab_client.metrics(run, ["test_acc", "train_loss"])
        api = client.get(f"/v1/runs/{run.id}/metrics", params={"names": "test_acc,train_loss"}).json()["series"]
        for name in ("test_acc", "train_loss"):
            assert [[r["step"], r["value"]] for r in rows if r["name"] == name] == api[name]

        buckets = groklab_client.metrics(run, ["test_acc"], max_points=7)
        assert len(buckets) == 7 and sum(b["count"] for b in buckets) == len(api["test_acc"])

        frame = groklab_client.metrics(run, ["test_acc"], as_dataframe=True)
        assert list(frame.columns) == ["run_id", "name", "step", "value"]
        assert frame["value"].tolist() == [value for _, value in api["test_acc"]]

        analysis = groklab_client.analysis(experiment)
        assert {row["id"] for row in analysis["runs"]} == set(experiment.run_ids)
        assert analysis == client.get(f"/v1/experiments/{experiment.id}/analysis").json()


def test_client_cancels_a_running_run_and_maps_problems_to_api_error(pg_stack: Stack, client: httpx.Client) -> None:
    with Client(pg_stack.base_url) as groklab_client:
        experiment = groklab_client.submit(tiny_spec(phases=[{"steps": 200_000}]))
        run_id = experiment.run_ids[0]
        wait_for_runs(client, [run_id], statuses={"running"})
        groklab_client.cancel(run_id)
        assert groklab_client.wait(run_id, progress=False, timeout=60).status == "cancelled"
        assert groklab_client.cancel(run_id).status == "cancelled"  # again: still cancelled
        with pytest.raises(ApiError) as missing:
            groklab_client.cancel(10**9)
        assert missing.value.status == 404


def test_cli_submits_yaml_watches_reports_status_exports_csv_and_cancels(
    pg_stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(name="cli-yaml")))
    url = pg_stack.base_url

    planned = groklab("submit", str(spec_path), "--dry-run", url=url)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout) == {"kind": "sweep", "name": "cli-yaml", "runs": 1, "total_steps": 300}
    assert "cli-yaml" not in groklab("status", url=url).stdout  # a dry run stores nothing

    submitted = groklab("submit", str(spec_path), url=url)
    assert submitted.returncode == 0, submitted.stderr
    experiment = json.loads(submitted.stdout)
    run_id = experiment["run_ids"][0]

    watched = groklab("watch", f"exp:{experiment['id']}", url=url)
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stdout and "test_acc" in watched.stdout

    status = groklab("status", str(experiment["id"]), url=url)
    assert status.returncode == 0, status.stderr
    assert "succeeded 1" in status.stdout and "300/300" in status.stdout
    listing = groklab("status", url=url)
    assert "cli-yaml" in listing.stdout

    exported = groklab("metrics", str(run_id), "--csv", "--names", "test_acc", url=url)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    api = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "test_acc"}).json()["series"]["test_acc"]
    assert [[int(r["step"]), float(r["value"])] for r in rows] == api

    finished = groklab("cancel", str(run_id), url=url)
    assert finished.returncode == 1
    assert "409" in finished.stderr and "Traceback" not in finished.stderr


def test_cli_delete_cancels_a_running_experiment_waits_for_its_worker_and_deletes_it(
    pg_stack: Stack, client: httpx.Client
) -> None:
    with Client(pg_stack.base_url) as groklab_client:
        experiment = groklab_client.submit(tiny_spec(phases=[{"steps": 200_000}], seeds=[0, 1]))
    wait_for_runs(client, experiment.run_ids[:1], statuses={"running"})
    assert client.delete(f"/v1/experiments/{experiment.id}").status_code == 409  # a worker holds a lease

    deleted = groklab("delete", str(experiment.id), url=pg_stack.base_url, timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert f"experiment {experiment.id} deleted, with its 2 run(s)" in deleted.stderr
    assert client.get(f"/v1/experiments/{experiment.id}").status_code == 404
    assert all(client.get(f"/v1/runs/{run_id}").status_code == 404 for run_id in experiment.run_ids)

    again = groklab("delete", str(experiment.id), url=pg_stack.base_url, timeout=30)
    assert again.returncode == 1 and "404" in again.stderr and "Traceback" not in again.stderr


def test_cli_and_client_say_plainly_that_the_server_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = groklab("status", url=url, timeout=30)
    assert result.returncode == 1
    assert "cannot reach the groklab api at " + url in result.stderr
    assert "Traceback" not in result.stderr
    with Client(url) as groklab_client, pytest.raises(ServerUnreachable):
        groklab_client.experiments()


def test_cli_and_client_say_plainly_that_the_key_is_bad(auth_stack: Stack) -> None:
    url = auth_stack.base_url
    for key in (None, "gl_not_a_real_key"):
        result = groklab("status", url=url, api_key=key, timeout=30)
        assert result.returncode == 1
        assert "API key" in result.stderr and "Traceback" not in result.stderr
    with Client(url, "gl_not_a_real_key") as groklab_client, pytest.raises(Unauthorized):
        groklab_client.experiments()

    key = create_key(auth_stack.env["GROKLAB_DATABASE_URL"], owner="cli-owner")
    assert groklab("status", url=url, api_key=key, timeout=30).returncode == 0
