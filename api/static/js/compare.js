// The experiment page's comparisons: every run's curves on shared charts, coloured by a spec field
// and fed by one grouped metric query (seeds folded server-side into a mean line inside a min/max
// band), and the runs table's sorting, filters and compare view of ticked runs.

import { get, post } from "./api.js";
import { StepChart, bucketsToSeries, colorAt } from "./charts.js";

const MAX_POINTS = 1000; // the compare view's buckets a run
// How each series the overlay draws looks; which series, grouped how and in how many buckets is
// the server's (GET /v1/experiments/{id}/overlay_query, groklab/overlay_query.py): the worker keeps
// the answer of that same query when the experiment finishes, so the first open reads it.
const CHART_LOOKS = {
  test_acc: { title: "Test accuracy" },
  train_acc: { title: "Train accuracy" },
  train_loss: { title: "Train loss (log scale)", log: true },
  test_loss: { title: "Test loss (log scale)", log: true },
  param_norm: { title: "Parameter norm" },
};
// Legends of more lines than this would be longer than the chart: the colour key above says it.
const MAX_LEGEND = 12;
// Remembered per experiment across the page's refreshes (it is rebuilt while runs train).
const choices = new Map();

// {"task.train_size": 1000, "phases.1.subset_size": 60, ...} of a nested spec.
export function flatSpec(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatSpec(inner, prefix ? `${prefix}.${key}` : key, out);
  } else if (Array.isArray(value) && value.length && value.every((v) => v && typeof v === "object")) {
    value.forEach((inner, i) => flatSpec(inner, `${prefix}.${i}`, out));
  } else {
    out[prefix] = value;
  }
  return out;
}

// Spec fields whose values differ among the runs (a run without the field counts as null).
export function varyingFields(specs) {
  const flat = specs.map((spec) => flatSpec(spec));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  return paths.filter((path) => new Set(flat.map((f) => JSON.stringify(f[path] ?? null))).size > 1);
}

function phaseBoundaries(specs) {
  const ends = new Set();
  for (const spec of specs) {
    let total = 0;
    (spec.phases || []).slice(0, -1).forEach((phase) => ends.add((total += phase.steps)));
  }
  return [...ends].sort((a, b) => a - b).slice(0, 10);
}

const show = (v) => (v == null ? "–" : typeof v === "number" ? String(+v.toPrecision(6)) : String(v));

function groupLabel(group, field) {
  const value = group[field];
  const seed = "seed" in group && field !== "seed" ? ` seed ${group.seed}` : "";
  return `${field === "label" ? "" : `${field.split(".").pop()} = `}${show(value)}${seed}`;
}

// The overlay card: controls, a colour key and the charts; `publish` gets the drawn state.
export function overlayCard(h, experiment, runs, publish) {
  const specs = runs.map((run) => run.spec);
  // field null: the one the experiment varies, which the server chooses (and keeps the answer of).
  const chosen = choices.get(experiment.id) || { field: null, seeds: "mean", steps: "linear", extra: "" };
  choices.set(experiment.id, chosen);
  const names = [...new Set(runs.flatMap((run) => Object.keys(run.latest_metrics || {})))].sort();
  const options = (pairs, value) => pairs.map(([v, text]) => {
    const option = h("option", { value: v }, text);
    if (v === value) option.selected = true;
    return option;
  });
  const select = (id, label, pairs, value, onchange) => {
    const el = h("select", { id, "aria-label": label }, options(pairs, value));
    el.addEventListener("change", () => onchange(el.value));
    return h("label", { class: "option" }, `${label} `, el);
  };
  const chartsEl = h("div", { class: "charts", id: "overlay-charts" });
  const key = h("div", { id: "overlay-key" });
  const message = h("p", { class: "muted", id: "overlay-message" });
  const markers = phaseBoundaries(specs);
  const redraw = () => draw().catch((error) => (message.textContent = error.message));
  const fieldSelect = select("overlay-field", "colour by", [], null, (v) => { chosen.field = v; redraw(); });
  const controls = h(
    "div",
    { id: "overlay-controls" },
    fieldSelect,
    select("overlay-seeds", "seeds", [["mean", "mean and min/max band"], ["each", "one by one"]], chosen.seeds, (v) => { chosen.seeds = v; redraw(); }),
    select("overlay-steps", "step axis", [["linear", "linear"], ["log", "log"]], chosen.steps, (v) => { chosen.steps = v; redraw(); }),
    select("overlay-series", "series", [["", "(none)"], ...names.filter((n) => !(n in CHART_LOOKS)).map((n) => [n, n])], chosen.extra, (v) => { chosen.extra = v; redraw(); }),
  );
  const card = h("div", { class: "card", id: "overlay" }, h("h2", {}, "Runs overlaid"), controls, key, message, chartsEl);
  let charts = [];

  async function draw() {
    const params = new URLSearchParams({ seeds: chosen.seeds });
    if (chosen.field) params.set("field", chosen.field);
    if (chosen.extra) params.set("series", chosen.extra);
    const overlay = await get(`/v1/experiments/${experiment.id}/overlay_query?${params}`);
    chosen.field = overlay.field;
    const fields = [...new Set([...overlay.fields, "label", chosen.field])];
    const fieldEl = fieldSelect.querySelector("select");
    fieldEl.replaceChildren(...options(fields.map((f) => [f, f]), chosen.field));
    fieldEl.value = chosen.field;
    const { names: shown, group_by: groupBy, max_points: maxPoints } = overlay.query;
    const defs = shown.map((id) => ({ id, title: id, ...CHART_LOOKS[id] }));
    // One grouped query feeds every chart: each group's buckets of each series.
    const answer = await post("/v1/metrics/query", overlay.query);
    const values = [...new Set(answer.groups.map((g) => JSON.stringify(g.group[chosen.field] ?? null)))];
    const groups = answer.groups.map((g, i) => ({
      id: `g${i}`,
      label: groupLabel(g.group, chosen.field),
      color: colorAt(values.indexOf(JSON.stringify(g.group[chosen.field] ?? null)), values.length),
      runs: g.run_ids.length,
      key: JSON.stringify(g.group),
    }));
    const byKey = Object.fromEntries(groups.map((g) => [g.key, g]));
    const rows = {};
    for (const row of answer.rows) ((rows[row.name] ||= {})[byKey[JSON.stringify(row.group)].id] ||= []).push(row);
    charts.forEach(([, chart]) => chart.destroy());
    chartsEl.replaceChildren();
    charts = defs.map((def) => {
      const el = h("div", { class: "chart", "data-chart": `overlay-${def.id}` });
      chartsEl.append(el);
      const metrics = groups.map((g) => ({ name: g.id, label: g.label, color: g.color }));
      const data = Object.fromEntries(groups.map((g) => [g.id, bucketsToSeries(rows[def.id]?.[g.id] || [])]));
      const chart = new StepChart(el, { title: def.title, metrics, log: def.log, logSteps: chosen.steps === "log", markers, data, legend: groups.length <= MAX_LEGEND });
      return [def.id, chart];
    });
    const shownValues = values.map((v) => JSON.parse(v));
    key.replaceChildren(
      `${chosen.field}: `,
      ...shownValues.map((v, i) => h("span", { class: "swatch", style: `--c: ${colorAt(i, values.length)}` }, show(v))),
      markers.length ? h("span", { class: "muted" }, ` · phase boundary at ${markers.join(", ")} (dashed)`) : "",
    );
    message.textContent = chosen.seeds === "mean" ? "lines: mean over seeds; bands: least and greatest seed (bucket means)" : "one line per seed";
    publish({
      field: chosen.field, seeds: chosen.seeds, steps: chosen.steps, groupBy, markers, maxPoints,
      groups: groups.map(({ label, color, runs: n }) => ({ label, color, runs: n })),
      charts: Object.fromEntries(charts.map(([id, chart]) => [id, chart.counts()])),
    });
  }
  return { el: card, draw: redraw };
}

// The runs table: click a header to sort (again to reverse), filter by text, label and status,
// tick runs to compare them.
export function runsTable(h, experiment, rows, columns, cell, onCompare) {
  const chosen = choices.get(`table-${experiment.id}`) || { sort: "id", descending: false, text: "", label: "", status: "", ticked: new Set() };
  choices.set(`table-${experiment.id}`, chosen);
  const table = h("table", { id: "runs" });
  const filter = h("input", { id: "runs-filter", type: "search", placeholder: "filter runs", value: chosen.text });
  const options = (values) => ["", ...[...new Set(values)].sort()].map((v) => {
    const option = h("option", { value: v }, v || "any");
    return option;
  });
  const labelSelect = h("select", { id: "runs-label", "aria-label": "label" }, options(rows.map((r) => r.label || "–")));
  const statusSelect = h("select", { id: "runs-status", "aria-label": "status" }, options(rows.map((r) => r.status)));
  labelSelect.value = chosen.label;
  statusSelect.value = chosen.status;
  const compare = h("button", { id: "compare-button", type: "button" }, "compare ticked runs");
  const render = () => {
    const text = chosen.text.trim().toLowerCase();
    const shown = rows
      .filter((r) => !chosen.label || (r.label || "–") === chosen.label)
      .filter((r) => !chosen.status || r.status === chosen.status)
      .filter((r) => !text || columns.some((c) => String(r[c] ?? "").toLowerCase().includes(text)))
      .sort((a, b) => {
        const [x, y] = [a[chosen.sort], b[chosen.sort]];
        if (x == null || y == null) return (x == null) - (y == null) || a.id - b.id;
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return (chosen.descending ? -order : order) || a.id - b.id;
      });
    const header = h("tr", {}, h("th", {}, ""), columns.map((c) => {
      const th = h("th", { class: "sortable", "data-column": c }, c + (chosen.sort === c ? (chosen.descending ? " ▾" : " ▴") : ""));
      th.addEventListener("click", () => {
        chosen.descending = chosen.sort === c ? !chosen.descending : false;
        chosen.sort = c;
        render();
      });
      return th;
    }));
    table.replaceChildren(header, ...shown.map((r) => {
      const box = h("input", { type: "checkbox", class: "tick", "data-run": r.id, "aria-label": `compare run ${r.id}` });
      box.checked = chosen.ticked.has(r.id);
      box.addEventListener("change", () => (box.checked ? chosen.ticked.add(r.id) : chosen.ticked.delete(r.id)));
      return h("tr", { "data-run": r.id }, h("td", {}, box), columns.map((c) => h("td", {}, cell(r, c))));
    }));
    table.dataset.shown = JSON.stringify(shown.map((r) => r.id));
  };
  filter.addEventListener("input", () => { chosen.text = filter.value; render(); });
  labelSelect.addEventListener("change", () => { chosen.label = labelSelect.value; render(); });
  statusSelect.addEventListener("change", () => { chosen.status = statusSelect.value; render(); });
  compare.addEventListener("click", () => onCompare([...chosen.ticked].sort((a, b) => a - b)));
  render();
  const bar = h("div", { id: "runs-controls" }, filter, h("label", { class: "option" }, "label ", labelSelect), h("label", { class: "option" }, "status ", statusSelect), " ", compare);
  return h("div", {}, bar, table);
}

// The compare view: the ticked runs' curves overlaid (one query, a line each) and the spec fields
// in which they differ.
export async function compareView(h, el, runs, publish) {
  el.replaceChildren();
  if (runs.length < 2) {
    el.append(h("p", { class: "muted" }, "Tick at least two runs to compare them."));
    return;
  }
  const fields = varyingFields(runs.map((r) => r.spec));
  const flat = runs.map((r) => flatSpec(r.spec));
  const diff = h(
    "table",
    { id: "compare-diff" },
    h("tr", {}, h("th", {}, "field"), runs.map((r) => h("th", {}, `run ${r.id}`))),
    fields.map((f, i) => h("tr", { "data-field": f }, h("td", {}, f), flat.map((spec) => h("td", {}, show(spec[f]))))),
  );
  const chartsEl = h("div", { class: "charts" });
  el.append(h("h2", {}, `Comparing runs ${runs.map((r) => r.id).join(", ")}`), diff, chartsEl);
  const defs = ["test_acc", "train_acc", "train_loss"].map((id) => ({ id, ...CHART_LOOKS[id] }));
  const answer = await post("/v1/metrics/query", { run_ids: runs.map((r) => r.id), names: defs.map((d) => d.id), max_points: MAX_POINTS });
  const metrics = runs.map((r, i) => ({ name: `r${r.id}`, label: `run ${r.id}`, color: colorAt(i, runs.length) }));
  const counts = {};
  for (const def of defs) {
    const chartEl = h("div", { class: "chart", "data-chart": `compare-${def.id}` });
    chartsEl.append(chartEl);
    const data = Object.fromEntries(runs.map((r) => [`r${r.id}`, bucketsToSeries(answer.rows.filter((row) => row.run_id === r.id && row.name === def.id))]));
    const chart = new StepChart(chartEl, { title: def.title, metrics, log: def.log, markers: phaseBoundaries(runs.map((r) => r.spec)), data });
    counts[def.id] = chart.counts();
  }
  publish({ runs: runs.map((r) => r.id), fields, charts: counts });
}
