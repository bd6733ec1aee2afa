"""The documentation site: built strictly from docs/, its reference pages generated from the code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from engine.kinds import register, unregister
from engine.kinds.base import ExperimentKind, KindRequest
from engine.spec import RunSpec
from tests.services import ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    # --strict: a broken link, a missing page or a docstring mkdocstrings cannot read fails here.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def test_run_spec_reference_lists_every_field_of_the_code(site: Path) -> None:
    page = _text((site / "reference" / "run-spec" / "index.html").read_text())
    for name in RunSpec.model_fields:
        assert name in page, name
    # A kind's own field, and its description written in code only.
    assert "relative_tolerance" in page
    assert "Stop once high / low &lt; 1 + relative_tolerance." in page


def test_http_api_reference_comes_from_the_openapi_schema(site: Path) -> None:
    from api.main import create_app

    page = _text((site / "reference" / "http-api" / "index.html").read_text())
    for path, operations in create_app().openapi()["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in page, (method, path)
    assert "circuit_formed_loss" in page  # a query parameter of the analysis routes


def test_client_reference_renders_the_docstrings(site: Path) -> None:
    page = _text((site / "reference" / "client" / "index.html").read_text())
    assert "load_model" in page
    assert "Runs (of one experiment, or all of the owner's) filtered by spec fields" in page


def test_pages_load_nothing_from_the_network(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) > 15
    for page in pages:
        html = page.read_text()
        external = re.findall(r'(?:<script[^>]*\ssrc|<link[^>]*\shref|<img[^>]*\ssrc)="(https?://[^"]+)"', html)
        external += re.findall(r'import\(\s*"(https?://[^"]+)"', html)
        assert not external, (page, external)


def test_a_field_added_in_code_appears_with_no_hand_edit() -> None:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)

    class PaintExperiment(KindRequest):
        """A kind of this test's own."""

        kind: str = "paint"
        brush_width: int = Field(3, description="Width of the brush, in bristles.")

    register(ExperimentKind("paint", PaintExperiment, lambda request, max_runs, phase1_spec: []))
    try:
        page = hook.run_spec_page()
    finally:
        unregister("paint")
    assert "| `brush_width` | int | `3` | Width of the brush, in bristles. |" in page
    assert "`paint`: [PaintExperiment](#paintexperiment)" in page
    assert "brush_width" not in hook.run_spec_page()


def test_readme_is_short_and_its_links_and_figures_hold() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    # Every relative link (docs pages, notebooks, the picture) names a file of the repository.
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).is_file(), target
    # Each measured figure carries its date and a link to the page that says how to rerun it.
    figures = readme.split("| what | measured | date | rerun |", 1)[1].split("\n\n", 1)[0]
    rows = [row for row in figures.strip().splitlines()[1:]]
    assert len(rows) >= 5
    for row in rows:
        assert re.search(r"\| 20\d\d-\d\d-\d\d \| \[[^]]+\]\(docs/[^)]+\) \|$", row), row
