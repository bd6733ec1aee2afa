"""The notebooks of docs/notebooks/, executed cell by cell against one live embedded server.

Each notebook's last cell asserts its point (the key frequencies carry the test accuracy; the
search's bracket holds D_crit), so a notebook that no longer runs, or no longer shows what it
says, fails here. One `bin/groklab up` serves both notebooks, started as the README starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.services import ROOT, free_port, wait_http

NOTEBOOKS = ROOT / "docs" / "notebooks"
CELL_TIMEOUT = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("notebook-server")
    # No server setting leaks in; GROKLAB_VENV (bin/groklab's own) picks an existing virtualenv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_") or k == "GROKLAB_VENV"}
    env["GROKLAB_TORCH_THREADS"] = "1"
    log = (data_dir / "server.log").open("w")
    process = subprocess.Popen(
        [str(ROOT / "bin" / "groklab"), "up", "--port", str(free_port()), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{_port(process)}"
    try:
        wait_http(f"{base_url}/readyz", timeout=240)
        yield base_url
    finally:
        process.send_signal(signal.SIGINT)  # groklab up stops its api and worker on Ctrl-C
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _port(process: subprocess.Popen[str]) -> str:
    args = list(process.args)  # type: ignore[arg-type]
    return args[args.index("--port") + 1]


def execute(notebook: Path, base_url: str) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{notebook.name} is stored with outputs: clear them before committing"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env["GROKLAB_URL"] = base_url
    # The kernel imports this checkout's code, also where the virtualenv holds another install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, on a failed cell
    return nb


def _text_outputs(nb: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)


def test_grok_a_model_then_look_inside(server: str) -> None:
    started = time.monotonic()
    nb = execute(NOTEBOOKS / "grok-and-look-inside.ipynb", server)
    assert "checked:" in _text_outputs(nb)
    print(f"grok-and-look-inside.ipynb: {time.monotonic() - started:.0f} s")


def test_d_crit_in_a_few_runs(server: str) -> None:
    started = time.monotonic()
    nb = execute(NOTEBOOKS / "d-crit-in-a-few-runs.ipynb", server)
    assert "D_crit in [" in _text_outputs(nb)
    print(f"d-crit-in-a-few-runs.ipynb: {time.monotonic() - started:.0f} s")
