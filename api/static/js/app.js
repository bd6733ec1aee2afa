// The dashboard: hash routes #/ (experiments), #/experiments/ID and #/runs/ID.

import { HttpError, Unauthorized, forgetKey, get, queryBuckets, queryPoints, saveKey, storedKey, streamMetrics } from "./api.js";
import { StepChart, bucketsToSeries, comparisonChart, spectrumChart, sweepChart } from "./charts.js";
import { compareView, overlayCard, runsTable } from "./compare.js";

const MAX_POINTS = 1000;
const REFRESH_MS = 5000;
const RENDER_MS = 250;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const RUN_CHARTS = [
  { id: "loss", title: "Loss (log scale)", log: true, metrics: [{ name: "train_loss" }, { name: "test_loss" }] },
  { id: "accuracy", title: "Accuracy", metrics: [{ name: "train_acc" }, { name: "test_acc" }] },
  { id: "param_norm", title: "Parameter norm", metrics: [{ name: "param_norm" }] },
  { id: "margin", title: "Logit margin", metrics: [{ name: "train_margin" }, { name: "test_margin" }] },
];
// Nanda et al.'s progress measures (engine/progress_measures.py) beside the losses they explain,
// train and test in the loss chart's colours; drawn for runs that log them, beside the spectrum.
const PROGRESS_CHART = {
  id: "progress",
  title: "Progress measures (log scale)",
  log: true,
  metrics: [
    { name: "restricted_loss", color: "#2ca02c" },
    { name: "excluded_loss", color: "#9467bd" },
    { name: "train_loss", color: "#1f77b4" },
    { name: "test_loss", color: "#d62728" },
  ],
};

const app = document.getElementById("app");
// What the page shows, for tests and the curious: the route, whether it is live, points per chart.
// The run page adds `spectrum`: the Fourier view it draws ({step, kept_steps, ...}), null when none.
const state = (window.groklab = { page: null, live: false, maxPoints: MAX_POINTS, charts: {}, spectrum: null });
let cleanups = [];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  el.append(...children.flat().filter((c) => c != null).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

const fmt = (v, digits = 3) => (v == null ? "–" : typeof v === "number" ? +v.toFixed(digits) + "" : v);
const badge = (status, count) => h("span", { class: `badge ${status}` }, count == null ? status : `${status} ${count}`);

function keyBar() {
  const bar = document.getElementById("key");
  bar.replaceChildren();
  const key = storedKey();
  if (key) {
    bar.append(`key ${key.slice(0, 8)}… `, h("a", { href: "#", onclick: (e) => { e.preventDefault(); forgetKey(); route(); } }, "forget"));
  }
}

function keyForm(message) {
  const input = h("input", { type: "password", name: "key", placeholder: "gl_...", size: "48", autocomplete: "off" });
  const form = h(
    "form",
    { id: "key-form", class: "card" },
    h("h2", {}, "API key needed"),
    h("p", {}, message, h("br"), "Create one with ", h("code", {}, "groklab keys create --owner NAME"), "; it is kept in this browser's localStorage."),
    input,
    h("button", { type: "submit" }, "Use key"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) {
      saveKey(input.value);
      route();
    }
  });
  app.replaceChildren(form);
  input.focus();
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  cleanups.push(() => clearInterval(timer));
}

async function experimentsPage() {
  const page = await get("/v1/experiments?limit=100");
  const rows = page.items.map((e) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.id)),
      h("td", {}, e.name || "–"),
      h("td", {}, new Date(e.created_at).toLocaleString()),
      h("td", {}, e.run_ids.length),
      h("td", {}, Object.entries(e.status_counts).map(([s, n]) => badge(s, n))),
    ),
  );
  app.replaceChildren(
    h("h1", {}, "Experiments"),
    rows.length
      ? h("table", { id: "experiments" }, h("tr", {}, ["id", "name", "created", "runs", "status"].map((c) => h("th", {}, c))), rows)
      : h("p", {}, "No experiments yet: POST a spec to /v1/experiments or run `groklab submit spec.json`."),
  );
  every(REFRESH_MS, () => route({ quiet: true }));
}

const SIDE_NAMES = { phase2: "ungrokking, on D'", run: "from scratch", memorise: "memorising runs", generalise: "generalising runs", probe: "search probes" };

// A d_crit_search's state (the analysis' `search`): its bracket, estimate and probes by round.
function searchCard(search) {
  const [low, high] = search.bracket;
  const state = search.ended ? `ended: ${search.end_reason.replaceAll("_", " ")}` : "searching";
  const estimate = search.estimate.d_crit != null
    ? `D_crit ≈ ${Math.round(search.estimate.d_crit)}` + (search.estimate.interval ? `, 95% interval [${search.estimate.interval.map(Math.round).join(", ")}]` : "")
    : `D_crit: ${search.estimate.reason}`;
  const side = search.side === "ungrokking" ? "ungrokking, on D'" : "from scratch";
  return h(
    "div",
    { class: "card", id: "search" },
    h("p", { id: "bracket" }, `Search (${side}): bracket [${low}, ${high}] after ${search.rounds} round${search.rounds === 1 ? "" : "s"} (${state}); ${estimate}`),
    h(
      "table",
      { id: "probes" },
      h("tr", {}, ["round", "D", "mean final test accuracy", "n"].map((c) => h("th", {}, c))),
      search.probes.map((p) => h("tr", {}, [p.round, p.train_size, fmt(p.mean_final_test_acc), p.n].map((v) => h("td", {}, String(v))))),
    ),
  );
}

// A speed-up of the method over the baseline (the analysis' method_comparison.tuned / .untuned).
function speedText(speed) {
  if (speed.speed_up == null) return `none (${speed.reason})`;
  const interval = speed.interval ? `, 95% interval over seeds [${speed.interval.map((v) => fmt(v)).join(", ")}]` : "";
  const bound = speed.bound ? ` (a ${speed.bound} bound: a median is censored at the budget)` : "";
  return `${fmt(speed.speed_up)}×${interval}${bound}`;
}

// A method_comparison (the analysis' `method_comparison`): its speed-ups, a chart of median steps
// per configuration and the table of every configuration.
function comparisonCard(comparison) {
  const chart = h("div", { class: "chart", "data-chart": "comparison" });
  const best = Object.fromEntries(Object.entries(comparison.best).map(([side, c]) => [side, c && `${c.learning_rate}|${c.weight_decay}`]));
  const rows = comparison.configurations.map((c) => {
    const notes = [best[c.side] === `${c.learning_rate}|${c.weight_decay}` ? "best" : "", c.untuned ? "untuned" : ""].filter(Boolean).join(", ");
    const median = c.median_steps == null ? "–" : `${c.censored ? "≥ " : ""}${c.median_steps}`;
    const reached = `${c.seeds.filter((s) => !s.censored).length}/${c.seeds.length}`;
    return h("tr", {}, [c.side, c.learning_rate, c.weight_decay, median, reached, notes].map((v) => h("td", {}, String(v))));
  });
  const card = h(
    "div",
    { class: "card", id: "comparison" },
    h("p", { id: "speed-up-untuned" }, `Untuned speed-up of the method (both at the base spec's learning rate and weight decay): ${speedText(comparison.untuned)}`),
    h("p", { id: "speed-up-tuned" }, `Tuned speed-up (each side at its best configuration): ${speedText(comparison.tuned)}`),
    chart,
    h(
      "table",
      { id: "configurations" },
      h("tr", {}, ["side", "learning rate", "weight decay", `median steps to ${comparison.level}`, "seeds that reached it", ""].map((c) => h("th", {}, c))),
      rows,
    ),
  );
  return { card, draw: () => comparisonChart(chart, comparison) };
}

async function experimentPage(id) {
  const [experiment, analysis] = await Promise.all([get(`/v1/experiments/${id}`), get(`/v1/experiments/${id}/analysis`)]);
  const sweep = h("div", { class: "chart", "data-chart": "sweep" });
  // Each side's D_crit (ungrokking's phase 2 on D', or runs from scratch), those with an
  // estimate first; phase 1 of ungrokking trains on one D and has no curve of its own.
  const sides = Object.entries(analysis.d_crit)
    .filter(([role]) => role !== "phase1")
    .sort(([, a], [, b]) => (a.pooled?.d_crit == null) - (b.pooled?.d_crit == null));
  const dCritLines = sides.map(([role, estimate]) => {
    const pooled = estimate.pooled;
    const text = pooled?.d_crit != null
      ? `D_crit (${SIDE_NAMES[role] || role}) ≈ ${Math.round(pooled.d_crit)}` + (pooled.interval ? `, 95% interval [${pooled.interval.map(Math.round).join(", ")}]` : "")
      : `D_crit (${SIDE_NAMES[role] || role}): ${pooled?.reason || "needs succeeded runs"}`;
    return h("p", { class: "d-crit", "data-role": role }, text);
  });
  if (!dCritLines.length) dCritLines.push(h("p", { class: "d-crit" }, "D_crit: needs succeeded runs"));
  const pooled = sides.length ? sides[0][1].pooled : null;
  const phaseOne = analysis.accuracy_vs_train_size.filter((point) => point.role === "phase1");
  const phaseOneText = phaseOne.map((p) => `phase 1 (D = ${p.train_size.toLocaleString()}, wd ${p.weight_decay}): final test accuracy ${fmt(p.mean)} (n = ${p.n})`);
  const columns = ["id", "status", "role", ...(analysis.search ? ["search_round"] : []), "seed", "train_size", "weight_decay", "label", "final_train_acc", "final_test_acc", "memorisation_step", "circuit_formation_step", "generalisation_step", "grokking_delay"];
  const cell = (run, c) => (c === "id" ? h("a", { href: `#/runs/${run.id}` }, run.id) : c === "status" ? badge(run.status) : c === "label" ? h("span", { class: "label" }, run.label || "–") : fmt(run[c]));
  const specs = Object.fromEntries(experiment.runs.map((run) => [run.id, run]));
  const compareEl = h("div", { class: "card", id: "compare", hidden: "" });
  const showCompare = (ids) => {
    compareEl.hidden = false;
    compareView(h, compareEl, ids.map((runId) => specs[runId]).filter(Boolean), (drawn) => (state.compare = drawn)).catch((error) => compareEl.append(h("p", { class: "error" }, error.message)));
  };
  const table = runsTable(h, experiment, analysis.runs, columns, cell, showCompare);
  const overlay = overlayCard(h, experiment, experiment.runs, (drawn) => (state.overlay = drawn));
  // A method comparison trains one D: its own card replaces the accuracy-vs-D chart.
  const comparison = analysis.method_comparison ? comparisonCard(analysis.method_comparison) : null;
  app.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← experiments")),
    h("h1", {}, `Experiment ${experiment.id}${experiment.name ? `: ${experiment.name}` : ""}`),
    h("p", {}, Object.entries(experiment.status_counts).map(([s, n]) => badge(s, n)), analysis.complete ? "" : " (analysis updates as runs finish)"),
    comparison ? comparison.card : h("div", { class: "card" }, sweep, h("div", { id: "d-crit" }, dCritLines), phaseOneText.length ? h("p", { id: "phase1" }, phaseOneText.join("; ")) : ""),
    analysis.search ? searchCard(analysis.search) : "",
    overlay.el,
    h("h2", {}, "Runs"),
    table,
    compareEl,
  );
  await overlay.draw();
  if (comparison) comparison.draw();
  else sweepChart(sweep, analysis.accuracy_vs_train_size.filter((point) => point.role !== "phase1"), pooled, analysis.search?.bracket);
  if (!analysis.complete) every(REFRESH_MS, () => route({ quiet: true }));
}

function phaseBoundaries(spec) {
  const ends = [];
  let total = 0;
  for (const phase of spec.phases || []) ends.push((total += phase.steps));
  return ends.slice(0, -1);
}

// The embedding's Fourier spectrum at a stored checkpoint, with a choice of the stored steps; the
// latest one at first, followed as the run writes new ones until the reader picks another. A run
// without a Fourier view (422: not a transformer on add or subtract) shows no panel at all.
function spectrumPanel(runId) {
  const select = h("select", { id: "spectrum-step", "aria-label": "checkpoint step" });
  const shown = h("span", { id: "spectrum-step-shown" });
  const message = h("p", { id: "spectrum-message", class: "muted" }, "loading the Fourier view…");
  const chartEl = h("div", { "data-chart": "spectrum" });
  // data-state (loading, shown, error, unavailable) tells a reader whether an answer came yet.
  const el = h("div", { class: "chart", id: "spectrum", hidden: "", "data-state": "loading" }, h("label", { class: "option" }, "checkpoint step ", select), " ", shown, chartEl, message);
  let plot = null;
  let view = null;
  let followLatest = true;
  let unavailable = false; // a 422: no Fourier view for this run, now or later
  let pending = 0; // answers to an earlier choice that arrive after a later one are dropped
  let destroyed = false;

  const draw = (next) => {
    view = next;
    plot?.destroy();
    chartEl.replaceChildren();
    plot = spectrumChart(chartEl, view);
    select.replaceChildren(...view.kept_steps.map((s) => h("option", { value: String(s) }, s.toLocaleString())));
    select.value = String(view.step);
    shown.textContent = `showing step ${view.step.toLocaleString()}` + (view.step === view.kept_steps.at(-1) ? " (latest)" : "");
    message.textContent = `key frequencies (red): ${view.key_frequencies.join(", ")}`;
    message.className = "muted";
    state.spectrum = { step: view.step, kept_steps: view.kept_steps, frequencies: view.frequencies, embed_power: view.embed_power, key_frequencies: view.key_frequencies };
  };
  const show = async (step, { quiet = false } = {}) => {
    const ticket = ++pending;
    if (!quiet) {
      message.textContent = `loading ${step === "latest" ? "the latest checkpoint" : `step ${step}`}…`;
      el.dataset.state = "loading";
    }
    try {
      const next = await get(`/v1/runs/${runId}/fourier?step=${step}`);
      if (ticket !== pending) return;
      el.hidden = false;
      el.dataset.state = "shown";
      draw(next);
    } catch (error) {
      if (ticket !== pending) return;
      if (error instanceof HttpError && error.status === 422) {
        unavailable = true;
        el.hidden = true;
        el.dataset.state = "unavailable";
        state.spectrum = null;
        return;
      }
      if (error instanceof Unauthorized) return keyForm(error.message);
      el.hidden = false;
      // No latest checkpoint is a run that has not written one yet, not a failure.
      const notYet = error instanceof HttpError && error.status === 404 && step === "latest";
      el.dataset.state = "error";
      message.className = notYet ? "muted" : "error";
      message.textContent = notYet ? "Fourier view: no checkpoint stored yet; it appears once the run writes one." : `Fourier view: ${error.message}`;
    }
  };
  select.addEventListener("change", () => {
    followLatest = view != null && select.value === String(view.kept_steps.at(-1));
    show(select.value);
  });
  return {
    el,
    // The latest checkpoint, unless the reader chose another. Quiet (a timer's) refreshes read the
    // checkpoint list first, which is cheap, and ask for a Fourier view only of a newer checkpoint.
    async refresh({ quiet = false } = {}) {
      if (!followLatest || unavailable || destroyed) return;
      if (quiet) {
        const { checkpoints } = await get(`/v1/runs/${runId}/checkpoints`).catch(() => ({ checkpoints: [] }));
        if (destroyed || !checkpoints.length || checkpoints.at(-1).step === view?.step) return;
      }
      await show("latest", { quiet });
    },
    destroy() {
      destroyed = true;
      pending++;
      plot?.destroy();
    },
  };
}

async function runPage(id) {
  const run = await get(`/v1/runs/${id}`);
  const header = h("div", { id: "run-header" });
  const label = h("span", { class: "label", id: "run-label" }, "…");
  const chartsEl = h("div", { class: "charts" });
  const spectrum = spectrumPanel(id);
  app.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← experiments"), " · ", h("a", { href: `#/experiments/${run.experiment_id}` }, `experiment ${run.experiment_id}`)),
    h("h1", {}, `Run ${run.id} `, label),
    header,
    chartsEl,
  );
  cleanups.push(spectrum.destroy);
  const markers = phaseBoundaries(run.spec);
  // Log-spaced evaluations read best on a log step axis; the reader may switch either way.
  const logSteps = h("input", { type: "checkbox", id: "log-steps" });
  logSteps.checked = run.spec.eval_schedule?.kind === "log";
  chartsEl.before(h("label", { class: "option" }, logSteps, " log-scale steps"));
  let charts = [];
  // Whether the run logs the progress measures: known once a restricted_loss point is read.
  let hasProgress = false;
  const chartDefs = () => (hasProgress ? [...RUN_CHARTS, PROGRESS_CHART] : RUN_CHARTS);
  const makeCharts = () => {
    const previous = Object.fromEntries(charts.map(([cid, chart]) => [cid, chart.data]));
    charts.forEach(([, chart]) => chart.destroy());
    chartsEl.replaceChildren();
    charts = chartDefs().map((def) => {
      const el = h("div", { class: "chart", "data-chart": def.id });
      chartsEl.append(el);
      const options = { title: def.title, metrics: def.metrics, log: def.log, logSteps: logSteps.checked, markers };
      return [def.id, new StepChart(el, { ...options, data: previous[def.id] })];
    });
    // The spectrum panel keeps its plot across remakes: it has no step axis.
    chartsEl.append(spectrum.el);
  };
  makeCharts();
  logSteps.addEventListener("change", () => {
    makeCharts();
    charts.forEach(([, chart]) => chart.render());
    publish();
  });
  const names = [...new Set([...RUN_CHARTS, PROGRESS_CHART].flatMap((def) => def.metrics.map((m) => m.name)))];
  let step = run.step;
  let status = run.status;

  const showHeader = () => {
    const share = run.total_steps ? Math.min(1, step / run.total_steps) : 0;
    header.replaceChildren(
      badge(status),
      ` step ${step.toLocaleString()} / ${run.total_steps.toLocaleString()} `,
      h("progress", { max: "1", value: String(share) }),
      markers.length ? ` · phase boundaries at ${markers.join(", ")} (dashed)` : "",
      run.stopped_early_at_step != null ? ` · stopped early at step ${run.stopped_early_at_step.toLocaleString()} (stop_when)` : "",
      run.error ? h("pre", { class: "error" }, run.error) : "",
    );
  };
  const publish = () => {
    state.live = !FINISHED.has(status);
    state.charts = Object.fromEntries(charts.map(([cid, chart]) => [cid, chart.counts()]));
  };
  const showLabel = async () => {
    const analysis = await get(`/v1/runs/${id}/analysis`);
    label.textContent = analysis.label || "";
  };
  // Log-spaced evaluations are few (points x series) but bunched at the start, where buckets of
  // equal width would fold whole decades into one: those series are read point by point.
  const pointNames = run.spec.eval_schedule?.kind === "log" ? names.filter((n) => n !== "train_loss" || run.spec.train_loss_every == null) : [];
  const load = async () => {
    const answer = await queryBuckets(Number(id), names, MAX_POINTS);
    if (pointNames.length) Object.assign(answer.byName, (await queryPoints(Number(id), pointNames)).byName);
    if (!hasProgress && answer.byName.restricted_loss.length) {
      hasProgress = true;
      makeCharts();
    }
    for (const [, chart] of charts) {
      for (const m of chart.metrics) chart.setBuckets(m.name, bucketsToSeries(answer.byName[m.name]));
      chart.render();
    }
    publish();
    return answer.endStep;
  };

  showHeader();
  const endStep = await load();
  showLabel();
  publish();
  spectrum.refresh();
  if (FINISHED.has(status)) return;
  // A training run writes checkpoints as it goes; the panel follows them while it shows the latest.
  every(REFRESH_MS, () => spectrum.refresh({ quiet: true }));

  let dirty = false;
  let reloading = false;
  // A restricted_loss point came from the stream before the page had a progress chart: the chart
  // is made by reading the series back, so that its losses have the points before this one too.
  let progressArrived = false;
  every(RENDER_MS, async () => {
    if (!dirty || reloading) return;
    dirty = false;
    // Live points are raw; once they outnumber the buckets, ask the server to fold them again (and
    // read everything back when the progress chart is due).
    if ((progressArrived && !hasProgress) || charts.some(([, chart]) => chart.metrics.some((m) => chart.size(m.name) > 2 * MAX_POINTS))) {
      reloading = true;
      await load().finally(() => (reloading = false));
    } else {
      charts.forEach(([, chart]) => chart.render());
    }
    showHeader();
    publish();
  });
  const stop = streamMetrics(Number(id), endStep ?? -1, {
    onPoints({ step: s, values }) {
      status = "running";
      step = Math.max(step, s);
      for (const [, chart] of charts) for (const [name, value] of Object.entries(values)) chart.append(name, s, value);
      if ("restricted_loss" in values) progressArrived = true;
      dirty = true;
    },
    async onEnd(end) {
      status = end.status;
      Object.assign(run, await get(`/v1/runs/${id}`));
      step = run.step;
      await load();
      showHeader();
      showLabel();
      publish();
      spectrum.refresh();
    },
    onError(error) {
      if (error instanceof Unauthorized) keyForm(error.message);
    },
  });
  cleanups.push(stop);
}

async function route({ quiet = false } = {}) {
  cleanups.forEach((fn) => fn());
  cleanups = [];
  keyBar();
  const hash = location.hash.replace(/^#/, "") || "/";
  const match = hash.match(/^\/(experiments|runs)\/(\d+)$/);
  state.page = match ? `${match[1]}/${match[2]}` : "experiments";
  state.charts = {};
  state.spectrum = null;
  state.overlay = null;
  state.compare = null;
  if (!quiet) app.replaceChildren(h("p", { class: "loading" }, "loading…"));
  try {
    if (!match) await experimentsPage();
    else if (match[1] === "experiments") await experimentPage(match[2]);
    else await runPage(match[2]);
  } catch (error) {
    if (error instanceof Unauthorized) keyForm(error.message);
    else app.replaceChildren(h("p", { class: "error" }, error.message));
  }
}

window.addEventListener("hashchange", () => route());
route();
