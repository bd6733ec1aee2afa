"""`groklab reproduce` end to end on the embedded default (`groklab up`: SQLite, filesystem broker,
a real worker): the smoke scale's report holds every figure and a claims table whose verdicts come
from the stored series (change one stored value, resume, and its verdict changes); bad input is
a one-line error and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import select, update

from groklab.reproduce import EXPERIMENTS
from groklab.store.database import session_scope
from groklab.store.models import MetricPoint, MetricSeries, Run
from tests.services import ROOT, free_port, wait_http


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("reproduce")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(GROKLAB_TORCH_THREADS="1", GROKLAB_WORKERS="2")
    process = subprocess.Popen(
        [str(ROOT / "bin" / "groklab"), "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=240)
        yield f"http://127.0.0.1:{port}", data_dir
    finally:
        process.terminate()
        process.wait(timeout=60)


def groklab(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "groklab.cli", *args, "--url", url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


class Report(HTMLParser):
    """The report's figure ids with their SVGs, and the claims table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, int] = {}
        self.claims: list[list[str]] = []
        self._figure: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "figure":
            self._figure = named.get("id")
        elif tag == "svg" and self._figure:
            self.figures[self._figure] = self.figures.get(self._figure, 0) + 1
        elif tag == "table":
            self._table = named.get("id")
        elif tag == "tr" and self._table == "claims":
            self.claims.append([])
        elif tag == "td" and self._table == "claims":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "table":
            self._table = None
        elif tag == "td" and self._cell is not None:
            self.claims[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_report(path: Path) -> Report:
    report = Report()
    report.feed(path.read_text())
    report.claims = [row for row in report.claims if row]
    return report


def test_reproduce_writes_every_figure_and_claims_whose_verdicts_follow_the_stored_series(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, data_dir = server
    folder = tmp_path / "report"
    done = groklab("reproduce", "--scale", "smoke", "--dir", str(folder), url=url)
    assert done.returncode == 0, done.stderr
    assert "claims pass" in done.stderr
    report = read_report(folder / "report.html")
    assert report.figures == {f"figure-{name}": 1 for name in EXPERIMENTS}
    assert len(report.claims) >= 12 and all(len(row) == 6 for row in report.claims)
    assert {row[5] for row in report.claims} <= {"pass", "fail", "not testable"}
    text = (folder / "report.html").read_text()
    assert "<script" not in text and "<link" not in text and "<img" not in text  # opens with no network

    # The claim on the largest D' reads that run's final test accuracy: store the opposite value
    # at its last step, and the verdict turns.
    (row,) = [r for r in report.claims if r[1].startswith("the largest D'")]
    manifest = json.loads((folder / "manifest.json").read_text())
    database = f"sqlite:///{data_dir / 'groklab.db'}"
    with session_scope(database) as session:
        runs = session.scalars(select(Run).where(Run.experiment_id == manifest["experiments"]["ungrokking"]["id"],
                                                 Run.role == "phase2")).all()  # fmt: skip
        largest = max(runs, key=lambda r: r.spec["phases"][-1]["subset_size"])
        series_id = session.scalar(select(MetricSeries.id).where(MetricSeries.run_id == largest.id, MetricSeries.name == "test_acc"))
        last_step = max(session.scalars(select(MetricPoint.step).where(MetricPoint.series_id == series_id)))
        flipped = 0.0 if row[5] == "pass" else 1.0
        session.execute(update(MetricPoint).where(MetricPoint.series_id == series_id, MetricPoint.step == last_step).values(value=flipped))
    again = groklab("reproduce", "--resume", str(folder), url=url)
    assert again.returncode == 0, again.stderr
    (turned,) = [r for r in read_report(folder / "report.html").claims if r[1].startswith("the largest D'")]
    assert turned[5] == ("fail" if row[5] == "pass" else "pass"), (row, turned)
    assert turned[3] == f"final test accuracy {flipped:g}"


def test_bad_input_is_one_line_and_exit_1(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    down = groklab("reproduce", "--scale", "smoke", "--dir", str(tmp_path / "a"), url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1 and "cannot reach" in down.stderr

    unknown = groklab("reproduce", "--scale", "huge", "--dir", str(tmp_path / "b"), url=url)
    assert unknown.returncode == 1 and "unknown scale 'huge'" in unknown.stderr and "ci, paper, smoke" in unknown.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()

    # A folder made on another server: its experiment ids name nothing here that was made then.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({
        "server": "http://gpu-cluster:8000", "scale": "ci", "seeds": None,
        "experiments": {"grokking": {"id": 1, "created_at": "2020-01-01T00:00:00Z"}},
    }))  # fmt: skip
    refused = groklab("reproduce", "--resume", str(other), url=url)
    assert refused.returncode == 1 and "comes from another server" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
