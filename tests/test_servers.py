"""The test run brings its own PostgreSQL and Redis, and leaves none behind however it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import redis

from tests.services import ROOT

PROBE = textwrap.dedent(
    """
    import json, os, signal, time

    import psycopg

    from tests.services import pg_admin_url, redis_url


    def test_probe(test_servers):
        with psycopg.connect(pg_admin_url()) as conn:
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        with open(os.environ["PROBE_OUT"], "w") as out:
            json.dump({"pg": pg_admin_url(), "redis": redis_url(), "data": data_directory}, out)
        mode = os.environ["PROBE_MODE"]
        if mode != "fail":
            os.kill(os.getpid(), getattr(signal, mode))
            time.sleep(30)
        assert False, "a failed test"
    """
)


@pytest.mark.parametrize("ending", ["fail", "SIGINT", "SIGTERM"])
def test_private_servers_are_stopped_and_removed_when_the_run_ends(ending: str, tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "servers.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_TEST_")}
    env.update(PROBE_OUT=str(out), PROBE_MODE=ending)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_probe.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    if ending != "fail":  # the signal ended the run, not the assertion after the 30 s wait
        assert "a failed test" not in result.stdout, result.stdout
    used = json.loads(out.read_text())
    assert used["pg"] != used["redis"]

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(used["pg"], connect_timeout=2).close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(used["redis"], socket_connect_timeout=2).ping()
    assert not Path(used["data"]).exists()
