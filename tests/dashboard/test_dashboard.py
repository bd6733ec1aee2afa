"""The dashboard in a real headless Chromium against the PostgreSQL + Redis + worker stack."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import ROOT, Stack, bearer, create_key, tiny_spec, wait_for_runs, wait_until

CHROMIUM_MISSING = (
    "Chromium is needed for the dashboard tests and was not found. On Debian/Ubuntu: "
    "`apt-get install chromium` (.ci/run does this); elsewhere: `.venv/bin/playwright install "
    "chromium`; or set GROKLAB_TEST_CHROMIUM to a Chromium executable."
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
MAX_POINTS = 1000  # the page's buckets per series (window.groklab.maxPoints)
CHART_SERIES = {
    "loss": ["train_loss", "test_loss"],
    "accuracy": ["train_acc", "test_acc"],
    "param_norm": ["param_norm"],
    "margin": ["train_margin", "test_margin"],
    # Nanda et al.'s progress measures: every transformer on add or subtract logs them.
    "progress": ["restricted_loss", "excluded_loss", "train_loss", "test_loss"],
}


def system_chromium() -> str | None:
    """GROKLAB_TEST_CHROMIUM, else the system's Chromium; None leaves it to Playwright's own."""
    named = os.environ.get("GROKLAB_TEST_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        chromium = None
        try:
            chromium = playwright.chromium.launch(executable_path=system_chromium(), args=CHROMIUM_ARGS)
        except Error as exc:
            if "Executable doesn't exist" not in str(exc):
                raise
        if chromium is None:
            pytest.fail(CHROMIUM_MISSING, pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def submit(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def api_bucket_counts(client: httpx.Client, run_id: int) -> dict[str, int]:
    names = [name for series in CHART_SERIES.values() for name in series]
    answer = client.post("/v1/metrics/query", json={"run_ids": [run_id], "names": names, "max_points": MAX_POINTS}).json()
    counts = Counter(row["name"] for row in answer["rows"])
    return {name: counts[name] for name in names}


def page_counts(page: Any) -> dict[str, int]:
    charts = page.evaluate("window.groklab.charts")
    return {name: count for series in charts.values() for name, count in series.items()}


def open_run(page: Any, stack: Stack, run_id: int) -> None:
    # The charts are published once the series are read: 4, or 5 with the progress measures.
    page.goto(f"{stack.base_url}/#/runs/{run_id}")
    page.wait_for_function(
        "id => window.groklab && window.groklab.page === `runs/${id}` && Object.keys(window.groklab.charts).length >= 4",
        arg=run_id,
    )


def data_json(locator: Any, name: str) -> Any:
    """A JSON data-* attribute of the element, e.g. data_json(chart, "points")."""
    return json.loads(locator.get_attribute(f"data-{name}"))


@pytest.fixture(scope="module")
def phased_run(pg_stack: Stack) -> int:
    """Two phases (weight decay cut at step 2000), train_loss every step, checkpoints kept every
    1,000 steps for the Fourier view's step choice."""
    spec = tiny_spec(
        phases=[{"steps": 2000}, {"steps": 1000, "weight_decay": 0.1}],
        eval_every=50,
        train_loss_every=1,
        checkpoint_keep_every=1000,
    )
    with httpx.Client(base_url=pg_stack.base_url, timeout=30) as http:
        run_id = submit(http, spec)["run_ids"][0]
        wait_for_runs(http, [run_id], timeout=180)
    return run_id


def test_finished_run_page_plots_every_bucket_the_downsampling_api_returns(
    pg_stack: Stack, client: httpx.Client, page: Any, phased_run: int
) -> None:
    # train_loss every step: its 3,001 points fold into 1,000 buckets of 4 steps (the spikes kept
    # as min/max bands); the eval metrics' 61 points each stay one bucket a point.
    run_id = phased_run
    open_run(page, pg_stack, run_id)
    expected = api_bucket_counts(client, run_id)
    assert expected["train_loss"] == 751  # ceil(3001 / 4)
    assert expected["test_acc"] == 61
    assert page_counts(page) == expected
    for chart, names in CHART_SERIES.items():
        element = page.locator(f'[data-chart="{chart}"]')
        assert set(names) <= set(page.evaluate("el => JSON.parse(el.dataset.points)", element.element_handle()))
        assert element.locator("canvas").count() == 1
    assert "phase boundaries at 2000" in page.inner_text("#run-header")
    page.wait_for_function("document.querySelector('#run-label').textContent !== '…'")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)


def test_a_log_scheduled_run_is_drawn_on_a_log_step_axis_and_the_reader_can_switch(
    pg_stack: Stack, client: httpx.Client, page: Any
) -> None:
    spec = tiny_spec(phases=[{"steps": 3000}], eval_schedule={"kind": "log", "points": 40})
    spec.pop("eval_every")
    run_id = submit(client, spec)["run_ids"][0]
    wait_for_runs(client, [run_id], timeout=180)
    steps = [s for s, _ in client.get(f"/v1/runs/{run_id}/metrics", params={"names": "test_acc"}).json()["series"]["test_acc"]]
    assert len(steps) == 41 and steps[:4] == [0, 1, 2, 3] and steps[-1] == 3000  # irregular steps

    # Every point is drawn, not buckets of equal width, which would fold the first steps together.
    names = [name for series in CHART_SERIES.values() for name in series]
    stored = client.get(f"/v1/runs/{run_id}/metrics", params={"names": ",".join(names)}).json()["series"]
    assert {name: len(points) for name, points in stored.items()} == {name: 41 for name in names}

    open_run(page, pg_stack, run_id)
    axes = "[...document.querySelectorAll('[data-step-axis]')].map(el => el.dataset.stepAxis)"
    assert page.is_checked("#log-steps")  # the default for a log-scheduled run
    assert page.evaluate(axes) == ["log"] * len(CHART_SERIES)
    assert page_counts(page) == {name: 40 for name in names}  # step 0 has no place on a log axis
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-run-log-steps.png"), full_page=True)

    page.uncheck("#log-steps")
    page.wait_for_function(f"{axes}.every(axis => axis === 'linear')")
    assert page_counts(page) == {name: 41 for name in names}


def test_live_run_page_gains_points_from_the_stream_while_the_run_trains(
    pg_stack: Stack, client: httpx.Client, page: Any
) -> None:
    run_id = submit(client, tiny_spec(phases=[{"steps": 3000}], eval_every=10))["run_ids"][0]
    wait_for_runs(client, [run_id], statuses={"running"}, timeout=120)

    open_run(page, pg_stack, run_id)
    assert page.evaluate("window.groklab.live") is True
    first = page_counts(page)["test_acc"]
    page.wait_for_function("n => window.groklab.charts.accuracy.test_acc >= n + 20 || !window.groklab.live", arg=first)
    grown = page_counts(page)["test_acc"]
    status = client.get(f"/v1/runs/{run_id}").json()["status"]
    assert grown > first or status == "succeeded"  # a very fast CPU may finish before two renders
    assert grown >= first

    page.wait_for_function("!window.groklab.live", timeout=180_000)
    # After the `end` event the page re-reads the run through the downsampling API.
    page.wait_for_function("document.querySelector('#run-header .badge').textContent === 'succeeded'")
    assert page_counts(page) == api_bucket_counts(client, run_id)
    assert page_counts(page)["test_acc"] == 301


def test_run_page_draws_the_progress_measures_and_the_embedding_spectrum_of_each_kept_step(
    pg_stack: Stack, client: httpx.Client, page: Any, phased_run: int
) -> None:
    run_id = phased_run
    latest = client.get(f"/v1/runs/{run_id}/fourier").json()
    assert latest["step"] == 3000 and latest["kept_steps"] == [1000, 2000, 3000]

    open_run(page, pg_stack, run_id)
    progress = page.locator('[data-chart="progress"]')
    names = CHART_SERIES["progress"]
    # Exactly these four series, each with every bucket the downsampling API returns, on a log
    # value axis with the phase boundary dashed as on the other charts.
    expected = api_bucket_counts(client, run_id)
    assert expected["restricted_loss"] == expected["excluded_loss"] == 61
    assert data_json(progress, "points") == {name: expected[name] for name in names}
    assert list(data_json(progress, "points")) == names
    assert page.evaluate("window.groklab.charts.progress") == {name: expected[name] for name in names}
    assert progress.get_attribute("data-y-axis") == "log"
    assert data_json(progress, "markers") == data_json(page.locator('[data-chart="loss"]'), "markers") == [2000]
    assert progress.locator("canvas").count() == 1

    # The spectrum at the latest checkpoint: a bar per frequency, the key frequencies apart.
    panel = page.locator("#spectrum")
    spectrum = page.locator('[data-chart="spectrum"]')
    page.wait_for_function("window.groklab.spectrum && window.groklab.spectrum.step === 3000")
    assert panel.get_attribute("data-state") == "shown" and panel.is_visible()
    assert spectrum.get_attribute("data-step") == "3000"
    assert data_json(spectrum, "frequencies") == latest["frequencies"] == list(range(1, 7))
    assert data_json(spectrum, "bars") == pytest.approx(latest["embed_power"], rel=1e-12)
    assert data_json(spectrum, "highlighted") == sorted(latest["key_frequencies"])
    assert page.locator("#spectrum-step option").all_inner_texts() == ["1,000", "2,000", "3,000"]
    assert page.input_value("#spectrum-step") == "3000"
    assert page.inner_text("#spectrum-step-shown") == "showing step 3,000 (latest)"
    page.wait_for_function("document.querySelector('#run-label').textContent !== '…'")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-progress-measures.png"), full_page=True)

    # Another kept step: the bars are read again, that step's.
    earlier = client.get(f"/v1/runs/{run_id}/fourier", params={"step": 1000}).json()
    assert earlier["embed_power"] != pytest.approx(latest["embed_power"], rel=1e-3)
    page.select_option("#spectrum-step", "1000")
    page.wait_for_function("window.groklab.spectrum.step === 1000")
    assert spectrum.get_attribute("data-step") == "1000"
    assert data_json(spectrum, "bars") == pytest.approx(earlier["embed_power"], rel=1e-12)
    assert data_json(spectrum, "highlighted") == sorted(earlier["key_frequencies"])
    assert page.inner_text("#spectrum-step-shown") == "showing step 1,000"

    # A failed answer is said in the panel, and the bars shown stay those of the step they are.
    page.route(
        lambda url: "/fourier" in url and "step=2000" in url,
        lambda route: route.fulfill(
            status=500, content_type="application/problem+json", body=json.dumps({"detail": "the store is down"})
        ),
    )
    page.select_option("#spectrum-step", "2000")
    page.wait_for_selector('#spectrum[data-state="error"]')
    assert "the store is down" in page.inner_text("#spectrum-message")
    assert page.inner_text("#spectrum-step-shown") == "showing step 1,000"
    assert spectrum.get_attribute("data-step") == "1000"


def test_a_run_without_the_progress_measures_shows_neither_new_chart(pg_stack: Stack, client: httpx.Client, page: Any) -> None:
    # An MLP: no restricted_loss series, and its Fourier view is a 422, so the panel stays hidden.
    spec = tiny_spec(model={"kind": "mlp", "d_embed": 8, "d_hidden": 16}, phases=[{"steps": 20}])
    run_id = submit(client, spec)["run_ids"][0]
    wait_for_runs(client, [run_id], timeout=120)
    assert client.get(f"/v1/runs/{run_id}/fourier").status_code == 422

    open_run(page, pg_stack, run_id)
    page.wait_for_selector('#spectrum[data-state="unavailable"]', state="attached")
    assert set(page.evaluate("window.groklab.charts")) == set(CHART_SERIES) - {"progress"}
    assert page.locator('[data-chart="progress"]').count() == 0
    assert not page.locator("#spectrum").is_visible()
    assert page.evaluate("window.groklab.spectrum") is None


def test_experiment_page_shows_the_sweep_chart_d_crit_and_run_labels(pg_stack: Stack, client: httpx.Client, page: Any) -> None:
    spec = tiny_spec(seeds=[0, 1], sweep={"grid": {"task.train_size": [20, 60, 120]}})
    experiment = submit(client, spec)
    wait_for_runs(client, experiment["run_ids"], timeout=300)
    analysis = client.get(f"/v1/experiments/{experiment['id']}/analysis").json()

    page.goto(f"{pg_stack.base_url}/")
    row = page.locator("#experiments tr", has=page.locator(f'a[href="#/experiments/{experiment["id"]}"]'))
    row.wait_for()
    assert "succeeded 6" in row.inner_text()

    row.locator("a").click()
    page.wait_for_selector('[data-chart="sweep"] canvas')
    plotted = page.evaluate("JSON.parse(document.querySelector('[data-chart=sweep]').dataset.points)")
    assert plotted == {"run wd=1": 3}
    assert page.locator("#runs tr").count() == 1 + 6
    labels = page.locator("#runs .label").all_inner_texts()
    assert sorted(labels) == sorted(run["label"] or "–" for run in analysis["runs"])
    # when the Fourier circuit formed, beside memorisation and generalisation, per run
    headers = page.locator("#runs th").all_inner_texts()
    circuit = headers.index("circuit_formation_step")
    assert headers[circuit - 1 : circuit + 2] == ["memorisation_step", "circuit_formation_step", "generalisation_step"]
    shown = sorted(row.locator("td").nth(circuit).inner_text() for row in page.locator("#runs tr").all()[1:])
    served = [run["circuit_formation_step"] for run in analysis["runs"]]
    assert shown == sorted("–" if step is None else str(step) for step in served), (shown, served)
    assert any(step is not None for step in served)
    assert page.inner_text("#d-crit").startswith("D_crit")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-experiment.png"), full_page=True)


def test_ungrokking_experiment_page_shows_the_d_prime_curve_on_a_log_axis_with_phase_one_apart(
    pg_stack: Stack, client: httpx.Client, page: Any
) -> None:
    spec = {
        "kind": "ungrokking",
        "base": {**tiny_spec(), "phases": [{"steps": 300}]},
        "subset_sizes": [20, 40, 60],
        "phase2_steps": 200,
        "seeds": [0, 1],
    }
    experiment = submit(client, spec)
    wait_for_runs(client, experiment["run_ids"], timeout=300)
    analysis = client.get(f"/v1/experiments/{experiment['id']}/analysis").json()
    assert set(analysis["d_crit"]) == {"phase1", "phase2"}

    page.goto(f"{pg_stack.base_url}/#/experiments/{experiment['id']}")
    page.wait_for_selector('[data-chart="sweep"] canvas')
    sweep = page.locator('[data-chart="sweep"]').element_handle()
    assert page.evaluate("el => JSON.parse(el.dataset.points)", sweep) == {"phase2 wd=1": 3}  # D' only
    assert page.evaluate("el => el.dataset.xAxis", sweep) == "log"
    # Phase 2's D_crit (or why there is none), never phase 1's "fewer than two sizes".
    sides = page.locator("#d-crit .d-crit")
    assert sides.count() == 1 and sides.first.get_attribute("data-role") == "phase2"
    pooled = analysis["d_crit"]["phase2"]["pooled"]
    text = sides.first.inner_text()
    assert text.startswith("D_crit (ungrokking, on D')")
    assert (str(round(pooled["d_crit"])) in text) if pooled["d_crit"] is not None else (pooled["reason"] in text)
    assert page.inner_text("#phase1").startswith("phase 1 (D = 84, wd 1): final test accuracy")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-ungrokking.png"), full_page=True)


def test_key_form_appears_on_401_and_the_key_is_kept_and_sent(auth_stack: Stack, page: Any) -> None:
    key = create_key(auth_stack.env["GROKLAB_DATABASE_URL"], owner="dashboard-owner")
    with httpx.Client(base_url=auth_stack.base_url, headers=bearer(key)) as http:
        experiment = submit(http, tiny_spec())

    page.goto(f"{auth_stack.base_url}/")
    page.wait_for_selector("#key-form")
    page.fill("#key-form input", key)
    page.click("#key-form button")
    page.wait_for_selector(f'#experiments a[href="#/experiments/{experiment["id"]}"]')
    assert page.evaluate("localStorage.getItem('groklab.apiKey')") == key

    page.reload()  # the stored key is used without asking again
    page.wait_for_selector(f'#experiments a[href="#/experiments/{experiment["id"]}"]')
    assert page.locator("#key-form").count() == 0


def test_d_crit_search_page_shows_the_bracket_the_estimate_and_the_probes_by_round(
    pg_stack: Stack, client: httpx.Client, page: Any
) -> None:
    # A wide tolerance ends the search after its first round: two probes, one run each.
    spec = {"kind": "d_crit_search", "low": 10, "high": 150, "seeds": [0], "relative_tolerance": 3.0,
            "base": {**tiny_spec(), "task": {"p": 13}}}  # fmt: skip
    experiment = submit(client, spec)
    wait_for_runs(client, experiment["run_ids"], timeout=300)
    search = wait_until(lambda: (s := client.get(f"/v1/experiments/{experiment['id']}/analysis").json()["search"])["ended"] and s)

    page.goto(f"{pg_stack.base_url}/#/experiments/{experiment['id']}")
    page.wait_for_selector('[data-chart="sweep"] canvas')
    sweep = page.locator('[data-chart="sweep"]').element_handle()
    assert page.evaluate("el => JSON.parse(el.dataset.bracket)", sweep) == search["bracket"]
    assert page.evaluate("el => JSON.parse(el.dataset.points)", sweep) == {"probe wd=1": 2}
    low, high = search["bracket"]
    bracket_text = page.inner_text("#bracket")
    assert bracket_text.startswith(f"Search (from scratch): bracket [{low}, {high}] after 1 round (ended: reached tolerance)")
    rows = [r.locator("td").all_inner_texts() for r in page.locator("#probes tr").all()[1:]]
    assert [(int(r[0]), int(r[1]), int(r[3])) for r in rows] == [(p["round"], p["train_size"], p["n"]) for p in search["probes"]]
    assert "search_round" in page.locator("#runs th").all_inner_texts()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-d-crit-search.png"), full_page=True)


def _stored_experiment(url: str, specs: list[dict[str, Any]], curve: Any) -> tuple[int, list[int]]:
    """An experiment whose succeeded runs logged curve(spec) = {name: {step: value}}, written through
    the store (the page reads; nothing needs training)."""
    from groklab.store import runs as run_store
    from tests.recorded import points_of, record_experiment

    runs = [run_store.NewRun(spec=s, total_steps=500) for s in specs]
    return record_experiment(url, runs, [points_of(curve(spec)) for spec in specs], name="overlay")


def _curves(spec: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Memorised by step 50; test accuracy rises at a step set by weight decay and the seed, and
    falls on D' <= 40 after the phase boundary at 300: seeds differ, so bands have width."""
    seed, phases = spec["seed"], spec["phases"]
    d_prime = phases[1]["subset_size"] if len(phases) > 1 else None
    rise = 150 + 20 * seed if spec["optimizer"]["weight_decay"] >= 1 else 250 + 20 * seed
    steps = range(0, sum(p["steps"] for p in phases) + 1, 10)

    def test_acc(step: int) -> float:
        value = 0.1 if step < rise else 0.98
        if d_prime is not None and d_prime <= 40 and step > 300 + d_prime * 2:
            return 0.2 if d_prime < 40 else 0.6
        return value

    return {
        "train_acc": {s: min(1.0, 0.2 + s / 50) for s in steps},
        "test_acc": {s: test_acc(s) for s in steps},
        "train_loss": {s: 2.0 / (1 + s) + 0.01 * seed for s in steps},
        "test_loss": {s: 3.0 / (1 + s / 10) for s in steps},
        "param_norm": {s: 30 - s / 50 + seed for s in steps},
        "test_margin": {s: s / 100 for s in steps},
    }


def test_experiment_page_overlays_runs_by_a_spec_field_with_seed_bands_filters_and_compares(
    pg_stack: Stack, pg_database: str, client: httpx.Client, page: Any
) -> None:
    # Ungrokking's shape: phase 1 on D (two seeds), then D' in {20, 40, 60} from step 300.
    phase1 = [tiny_spec(phases=[{"steps": 300}], seed=s) for s in (0, 1)]
    phase2 = [
        tiny_spec(phases=[{"steps": 300}, {"steps": 200, "train_set": "subset", "subset_size": d}], seed=s)
        for d in (20, 40, 60) for s in (0, 1)
    ]  # fmt: skip
    ungrokking, run_ids = _stored_experiment(pg_database, phase1 + phase2, _curves)
    # As a worker does when the last run ends: the page's first query is then read, not computed.
    from groklab.lifecycle.finish import keep_overlay_answer
    from groklab.settings import Settings

    assert keep_overlay_answer(Settings(database_url=pg_database), ungrokking) == "miss"
    queries: list[Any] = []
    page.on("response", lambda r: queries.append(r) if r.url.endswith("/v1/metrics/query") else None)
    page.goto(f"{pg_stack.base_url}/#/experiments/{ungrokking}")
    page.wait_for_function("window.groklab.overlay && window.groklab.overlay.groups.length > 0")
    assert [r.headers.get("x-answer-cache") for r in queries] == ["hit"]
    overlay = page.evaluate("window.groklab.overlay")
    assert overlay["field"] == "phases.1.subset_size" and overlay["seeds"] == "mean" and overlay["maxPoints"] == 1000
    assert overlay["markers"] == [300]
    assert [(g["label"], g["runs"]) for g in overlay["groups"]] == [
        ("subset_size = 20", 2), ("subset_size = 40", 2), ("subset_size = 60", 2), ("subset_size = –", 2),
    ]  # fmt: skip
    assert len({g["color"] for g in overlay["groups"]}) == 4
    # What is drawn is what one grouped query answers: every group's buckets of every series.
    served = client.post(
        "/v1/metrics/query",
        json={"experiment_id": ungrokking, "names": ["test_acc"], "max_points": 1000, "group_by": ["phases.1.subset_size"]},
    ).json()
    per_group = Counter(json.dumps(row["group"]) for row in served["rows"])
    drawn = overlay["charts"]["test_acc"]
    assert sorted(drawn.values()) == sorted(per_group.values()) and len(drawn) == 4
    assert any(row["min"] < row["max"] for row in served["rows"])  # the seeds' band has width
    for chart in ("test_acc", "train_acc", "train_loss", "test_loss", "param_norm"):
        element = page.locator(f'[data-chart="overlay-{chart}"]')
        assert element.locator("canvas").count() == 1
        assert data_json(element, "markers") == [300]
    key = page.inner_text("#overlay-key")
    assert page.locator("#overlay-key .swatch").all_inner_texts() == ["20", "40", "60", "–"]
    assert key.startswith("phases.1.subset_size:") and "phase boundary at 300" in key, key
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#overlay").screenshot(path=str(ARTIFACTS / "dashboard-overlay-ungrokking.png"))

    # Seeds one by one: a line per run; the log step axis.
    page.select_option("#overlay-seeds", "each")
    page.wait_for_function("window.groklab.overlay.seeds === 'each'")
    assert [g["runs"] for g in page.evaluate("window.groklab.overlay.groups")] == [1] * 8
    page.select_option("#overlay-steps", "log")
    page.wait_for_function("window.groklab.overlay.steps === 'log'")
    assert page.locator('[data-chart="overlay-test_acc"]').get_attribute("data-step-axis") == "log"
    page.select_option("#overlay-series", "test_margin")
    page.wait_for_selector('[data-chart="overlay-test_margin"] canvas')

    # The runs table: sort by a column, filter by text and label, compare two ticked runs.
    analysis = client.get(f"/v1/experiments/{ungrokking}/analysis").json()["runs"]
    page.locator('#runs th[data-column="final_test_acc"]').click()
    page.locator('#runs th[data-column="final_test_acc"]').click()
    expected = sorted(analysis, key=lambda r: (-r["final_test_acc"], r["id"]))
    assert data_json(page.locator("#runs"), "shown") == [r["id"] for r in expected]
    label = analysis[-1]["label"]
    page.select_option("#runs-label", label)
    assert set(data_json(page.locator("#runs"), "shown")) == {r["id"] for r in analysis if r["label"] == label}
    page.select_option("#runs-label", "")
    page.fill("#runs-filter", "ungrokked")
    assert set(data_json(page.locator("#runs"), "shown")) == {r["id"] for r in analysis if "ungrokked" in str(r["label"])}
    page.fill("#runs-filter", "")
    assert page.locator("#runs tr[data-run]").count() == len(analysis)
    page.locator(f'#runs input[data-run="{run_ids[2]}"]').check()
    page.locator(f'#runs input[data-run="{run_ids[6]}"]').check()
    page.click("#compare-button")
    page.wait_for_function("window.groklab.compare")
    compared = page.evaluate("window.groklab.compare")
    assert compared["runs"] == [run_ids[2], run_ids[6]]
    assert compared["fields"] == ["phases.1.subset_size"]  # seeds equal, D' 20 vs 60
    assert page.locator("#compare-diff tr[data-field]").all_inner_texts() == ["phases.1.subset_size\t20\t60"]
    assert all(count > 0 for chart in compared["charts"].values() for count in chart.values())
    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)

    # The grokking example's shape: two weight decays overlaid, seeds folded.
    grokking, _ = _stored_experiment(
        pg_database,
        [tiny_spec(optimizer={"lr": 0.003, "weight_decay": wd}, seed=s) for wd in (1.0, 0.3) for s in (0, 1, 2)],
        _curves,
    )
    page.goto(f"{pg_stack.base_url}/#/experiments/{grokking}")
    page.wait_for_function("id => window.groklab.overlay && window.groklab.page === `experiments/${id}`", arg=grokking)
    overlay = page.evaluate("window.groklab.overlay")
    assert overlay["field"] == "optimizer.weight_decay" and overlay["markers"] == []
    assert [(g["label"], g["runs"]) for g in overlay["groups"]] == [("weight_decay = 0.3", 3), ("weight_decay = 1", 3)]


def test_method_comparison_page_shows_the_speed_ups_and_every_configuration_in_a_table_and_a_chart(
    pg_stack: Stack, pg_database: str, client: httpx.Client, page: Any
) -> None:
    """A method_comparison's runs stored with series drawn by the analysis tests (no training):
    the page's speed-ups, table rows and chart points are the analysis the api serves."""
    from pydantic import TypeAdapter

    from engine.experiments import ExperimentRequest, plan_experiment
    from groklab.submission import stored_run
    from tests.recorded import record_experiment
    from tests.test_method_comparison import COMPARISON, grid_rises, series

    request = TypeAdapter(ExperimentRequest).validate_python(COMPARISON)
    planned = plan_experiment(request, 500)
    rises = grid_rises(
        {(0.003, 1.0): [800, 900, None], (0.001, 2.0): [300, 500, 400]},
        {(0.003, 1.0): [400, 600, 500], (0.003, 2.0): [250, 350, 300]},
    )  # fmt: skip
    keys = [(run.role, run.spec.optimizer.lr, run.spec.optimizer.weight_decay, run.spec.seed) for run in planned]
    experiment_id, _ = record_experiment(
        pg_database, [stored_run(run) for run in planned],
        [[(name, int(s), v) for name, points in series(rises[key]).items() for s, v in points] for key in keys],
        name="comparison", kind="method_comparison", spec=request.model_dump(mode="json"),
    )  # fmt: skip
    comparison = client.get(f"/v1/experiments/{experiment_id}/analysis").json()["method_comparison"]

    page.goto(f"{pg_stack.base_url}/#/experiments/{experiment_id}")
    page.wait_for_selector('[data-chart="comparison"] canvas')
    rows = [r.locator("td").all_inner_texts() for r in page.locator("#configurations tr").all()[1:]]
    assert len(rows) == len(comparison["configurations"]) == 12
    for row, config in zip(rows, comparison["configurations"], strict=True):
        assert (row[0], float(row[1]), float(row[2])) == (config["side"], config["learning_rate"], config["weight_decay"])
        assert row[3] == ("≥ " if config["censored"] else "") + f"{config['median_steps']:g}"
    notes = {(r[0], float(r[1]), float(r[2])): r[5] for r in rows}
    assert notes[("baseline", 0.001, 2.0)] == "best" and notes[("method", 0.003, 2.0)] == "best"
    assert notes[("baseline", 0.003, 1.0)] == "untuned" and notes[("method", 0.003, 1.0)] == "untuned"
    assert f"{round(comparison['tuned']['speed_up'], 3):g}×" in page.inner_text("#speed-up-tuned")
    assert f"{round(comparison['untuned']['speed_up'], 3):g}×" in page.inner_text("#speed-up-untuned")
    chart = page.locator('[data-chart="comparison"]')
    censored = {
        side: sum(c["censored"] for c in comparison["configurations"] if c["side"] == side) for side in ("baseline", "method")
    }
    assert data_json(chart, "points") == {
        "baseline": 6 - censored["baseline"], "baseline (censored)": censored["baseline"],
        "method": 6 - censored["method"], "method (censored)": censored["method"],
    }  # fmt: skip
    assert len(data_json(chart, "configurations")) == 6
    assert page.locator('[data-chart="sweep"]').count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-method-comparison.png"), full_page=True)
