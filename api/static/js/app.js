// The dashboard: hash routes #/ (experiments), #/experiments/ID and #/runs/ID.

import { Unauthorized, forgetKey, get, queryBuckets, queryPoints, saveKey, storedKey, streamMetrics } from "./api.js";
import { StepChart, bucketsToSeries, sweepChart } from "./charts.js";

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

const app = document.getElementById("app");
// What the page shows, for tests and the curious: the route, whether it is live, points per chart.
const state = (window.groklab = { page: null, live: false, maxPoints: MAX_POINTS, charts: {} });
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

const SIDE_NAMES = { phase2: "ungrokking, on D'", run: "from scratch", memorise: "memorising runs", generalise: "generalising runs" };

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
  const columns = ["id", "status", "role", "seed", "train_size", "weight_decay", "label", "final_train_acc", "final_test_acc", "grokking_delay"];
  const table = h(
    "table",
    { id: "runs" },
    h("tr", {}, columns.map((c) => h("th", {}, c))),
    analysis.runs.map((run) =>
      h(
        "tr",
        {},
        columns.map((c) =>
          h("td", {}, c === "id" ? h("a", { href: `#/runs/${run.id}` }, run.id) : c === "status" ? badge(run.status) : c === "label" ? h("span", { class: "label" }, run.label || "–") : fmt(run[c])),
        ),
      ),
    ),
  );
  app.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← experiments")),
    h("h1", {}, `Experiment ${experiment.id}${experiment.name ? `: ${experiment.name}` : ""}`),
    h("p", {}, Object.entries(experiment.status_counts).map(([s, n]) => badge(s, n)), analysis.complete ? "" : " (analysis updates as runs finish)"),
    h("div", { class: "card" }, sweep, h("div", { id: "d-crit" }, dCritLines), phaseOneText.length ? h("p", { id: "phase1" }, phaseOneText.join("; ")) : ""),
    h("h2", {}, "Runs"),
    table,
  );
  sweepChart(sweep, analysis.accuracy_vs_train_size.filter((point) => point.role !== "phase1"), pooled);
  if (!analysis.complete) every(REFRESH_MS, () => route({ quiet: true }));
}

function phaseBoundaries(spec) {
  const ends = [];
  let total = 0;
  for (const phase of spec.phases || []) ends.push((total += phase.steps));
  return ends.slice(0, -1);
}

async function runPage(id) {
  const run = await get(`/v1/runs/${id}`);
  const header = h("div", { id: "run-header" });
  const label = h("span", { class: "label", id: "run-label" }, "…");
  const chartsEl = h("div", { class: "charts" });
  app.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← experiments"), " · ", h("a", { href: `#/experiments/${run.experiment_id}` }, `experiment ${run.experiment_id}`)),
    h("h1", {}, `Run ${run.id} `, label),
    header,
    chartsEl,
  );
  const markers = phaseBoundaries(run.spec);
  // Log-spaced evaluations read best on a log step axis; the reader may switch either way.
  const logSteps = h("input", { type: "checkbox", id: "log-steps" });
  logSteps.checked = run.spec.eval_schedule?.kind === "log";
  chartsEl.before(h("label", { class: "option" }, logSteps, " log-scale steps"));
  let charts = [];
  const makeCharts = () => {
    const previous = Object.fromEntries(charts.map(([cid, chart]) => [cid, chart.data]));
    charts.forEach(([, chart]) => chart.destroy());
    chartsEl.replaceChildren();
    charts = RUN_CHARTS.map((def) => {
      const el = h("div", { class: "chart", "data-chart": def.id });
      chartsEl.append(el);
      const options = { title: def.title, metrics: def.metrics, log: def.log, logSteps: logSteps.checked, markers };
      return [def.id, new StepChart(el, { ...options, data: previous[def.id] })];
    });
  };
  makeCharts();
  logSteps.addEventListener("change", () => {
    makeCharts();
    charts.forEach(([, chart]) => chart.render());
    publish();
  });
  const names = RUN_CHARTS.flatMap((def) => def.metrics.map((m) => m.name));
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
  if (FINISHED.has(status)) return;

  let dirty = false;
  let reloading = false;
  every(RENDER_MS, async () => {
    if (!dirty || reloading) return;
    dirty = false;
    // Live points are raw; once they outnumber the buckets, ask the server to fold them again.
    if (charts.some(([, chart]) => chart.metrics.some((m) => chart.size(m.name) > 2 * MAX_POINTS))) {
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
