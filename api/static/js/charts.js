// uPlot charts: step series drawn as a mean line inside a min/max band, the sweep chart and the
// Fourier spectrum's bars.

import uPlot from "../vendor/uPlot-1.6.32.esm.js";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

// The i-th of n colours: the palette while it lasts, else n hues around the wheel.
export function colorAt(i, n) {
  if (n <= PALETTE.length) return PALETTE[i % PALETTE.length];
  const [r, g, b] = hslToRgb((i * 360) / n, 0.65, 0.45);
  return `#${((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1)}`;
}

function hslToRgb(hue, s, l) {
  const k = (n) => (n + hue / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const f = (n) => Math.round(255 * (l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1))));
  return [f(0), f(8), f(4)];
}

function fade(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function chartWidth(el) {
  return Math.max(280, (el.clientWidth || 560) - 16);
}

// A log axis labelled at powers of ten only, at most about eight of them.
const decadeAxis = {
  size: 60,
  splits: (u, axis, min, max) => {
    const lo = Math.floor(Math.log10(min));
    const hi = Math.ceil(Math.log10(max));
    const stride = Math.max(1, Math.ceil((hi - lo) / 8));
    const splits = [];
    for (let e = lo; e <= hi; e += stride) splits.push(10 ** e);
    return splits;
  },
  values: (u, splits) => splits.map((v) => (v == null ? "" : v >= 0.01 && v <= 1000 ? String(+v.toPrecision(1)) : `1e${Math.round(Math.log10(v))}`)),
};

function verticalLines(u, xs, style) {
  const { ctx, bbox } = u;
  ctx.save();
  ctx.strokeStyle = style;
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = 1.5 * devicePixelRatio;
  for (const x of xs) {
    const px = u.valToPos(x, "x", true);
    if (px < bbox.left || px > bbox.left + bbox.width) continue;
    ctx.beginPath();
    ctx.moveTo(px, bbox.top);
    ctx.lineTo(px, bbox.top + bbox.height);
    ctx.stroke();
  }
  ctx.restore();
}

// One chart of several metrics over steps. Each metric is a list of buckets {x, min, max, mean};
// a bucket of one point (a live point from the stream) has min = max = mean. `log` puts the values
// on a log axis, `logSteps` the steps (for long runs on a log evaluation schedule; step 0 has no
// place there and is left out).
export class StepChart {
  constructor(el, { title, metrics, log = false, logSteps = false, markers = [], data = null, legend = true }) {
    this.el = el;
    this.metrics = metrics;
    this.log = log;
    this.logSteps = logSteps;
    this.markers = markers;
    this.data = data || Object.fromEntries(metrics.map((m) => [m.name, []]));
    const series = [{ label: "step" }];
    const bands = [];
    metrics.forEach((metric, i) => {
      const color = metric.color || PALETTE[i % PALETTE.length];
      const base = series.length;
      series.push({ label: `${metric.name} min`, stroke: fade(color, 0.35), width: 0.5, spanGaps: true });
      series.push({ label: `${metric.name} max`, stroke: fade(color, 0.35), width: 0.5, spanGaps: true });
      series.push({ label: metric.label || metric.name, stroke: color, width: 1.5, spanGaps: true });
      bands.push({ series: [base + 1, base], fill: fade(color, 0.18) });
    });
    this.plot = new uPlot(
      {
        title,
        width: chartWidth(el),
        height: 240,
        series,
        bands,
        scales: { x: logSteps ? { time: false, distr: 3 } : { time: false }, y: log ? { distr: 3 } : {} },
        axes: [logSteps ? { ...decadeAxis, size: 50, label: "step" } : { label: "step" }, log ? decadeAxis : { size: 60 }],
        legend: { show: legend, live: true },
        hooks: { draw: [(u) => verticalLines(u, this.markers, "rgba(90, 90, 90, 0.8)")] },
      },
      this.table(),
      el,
    );
    // The band edges stay in the plot but out of the legend.
    this.plot.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
      if (i > 0 && (i - 1) % 3 !== 2) row.style.display = "none";
    });
    this.publish();
  }

  setBuckets(name, buckets) {
    this.data[name] = buckets;
  }

  append(name, step, value) {
    const series = this.data[name];
    if (!series || (series.length && series[series.length - 1].x >= step)) return;
    series.push({ x: step, min: value, max: value, mean: value });
  }

  size(name) {
    return this.data[name]?.length ?? 0;
  }

  positive(v) {
    return v == null || (this.log && !(v > 0)) ? null : v;
  }

  plotted(name) {
    const rows = this.data[name] || [];
    return this.logSteps ? rows.filter((r) => r.x > 0) : rows;
  }

  destroy() {
    this.plot.destroy();
  }

  table() {
    const tables = this.metrics.map((m) => {
      const rows = this.plotted(m.name);
      return [
        rows.map((r) => r.x),
        rows.map((r) => this.positive(r.min)),
        rows.map((r) => this.positive(r.max)),
        rows.map((r) => this.positive(r.mean)),
      ];
    });
    return uPlot.join(tables);
  }

  render() {
    this.plot.setData(this.table());
    this.publish();
  }

  counts() {
    return Object.fromEntries(this.metrics.map((m) => [m.name, this.plotted(m.name).length]));
  }

  // Plotted buckets per metric, the axes' scales (as uPlot draws them) and the dashed phase
  // boundaries, for tests and for anyone reading the page's state.
  publish() {
    this.el.dataset.points = JSON.stringify(this.counts());
    this.el.dataset.stepAxis = this.logSteps ? "log" : "linear";
    this.el.dataset.yAxis = this.plot.scales.y.distr === 3 ? "log" : "linear";
    this.el.dataset.markers = JSON.stringify(this.markers);
  }
}

export function bucketsToSeries(rows) {
  return rows.map((row) => ({
    x: row.step_start === row.step_end ? row.step_start : Math.round((row.step_start + row.step_end) / 2),
    min: row.min,
    max: row.max,
    mean: row.mean,
  }));
}

// Final test accuracy against training-set size D on a log axis (as the paper's Fig. 7 draws it),
// one line per (role, weight decay), with the pooled D_crit estimate as a dashed line inside its
// shaded bootstrap interval.
// `bracket`: a d_crit_search's current [low, high], drawn as two dashed lines.
export function sweepChart(el, curves, dCrit, bracket) {
  const groups = new Map();
  for (const point of curves) {
    const key = `${point.role} wd=${point.weight_decay}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(point);
  }
  const keys = [...groups.keys()];
  const tables = keys.map((key) => {
    const points = groups.get(key).sort((a, b) => a.train_size - b.train_size);
    return [points.map((p) => p.train_size), points.map((p) => p.mean)];
  });
  const data = tables.length ? uPlot.join(tables) : [[], []];
  const series = [{ label: "D" }];
  keys.forEach((key, i) => {
    const color = PALETTE[i % PALETTE.length];
    series.push({ label: key, stroke: color, width: 2, spanGaps: true, points: { show: true, size: 7, fill: color } });
  });
  const drawDCrit = (u) => {
    if (bracket) verticalLines(u, bracket, "rgba(44, 160, 44, 0.9)");
    if (!dCrit || dCrit.d_crit == null) return;
    const { ctx, bbox } = u;
    if (dCrit.interval) {
      const [lo, hi] = dCrit.interval.map((v) => u.valToPos(v, "x", true));
      ctx.save();
      ctx.fillStyle = "rgba(214, 39, 40, 0.12)";
      ctx.fillRect(Math.max(lo, bbox.left), bbox.top, Math.min(hi, bbox.left + bbox.width) - Math.max(lo, bbox.left), bbox.height);
      ctx.restore();
    }
    verticalLines(u, [dCrit.d_crit], "rgba(214, 39, 40, 0.9)");
  };
  const plot = new uPlot(
    {
      title: "Final test accuracy vs training-set size D",
      width: chartWidth(el),
      height: 320,
      series,
      // A search's bracket stays in view even where no probe reached its ends.
      scales: { x: { time: false, distr: 3, ...(bracket ? { range: (u, min, max) => [Math.min(min ?? bracket[0], bracket[0]) * 0.9, Math.max(max ?? bracket[1], bracket[1]) * 1.1] } : {}) }, y: { range: [0, 1.02] } },
      axes: [{ label: "D (training pairs, log scale)" }, { label: "test accuracy", size: 60 }],
      hooks: { draw: [drawDCrit] },
    },
    data,
    el,
  );
  el.dataset.points = JSON.stringify(Object.fromEntries(keys.map((k, i) => [k, tables[i][0].length])));
  el.dataset.xAxis = "log";
  if (bracket) el.dataset.bracket = JSON.stringify(bracket);
  return plot;
}

const KEY_COLOR = "#d62728";
const OTHER_COLOR = "#7f98b3";

// The embedding's power per frequency k = 1 .. P // 2 at one checkpoint (GET /v1/runs/{id}/fourier),
// one bar each; the key frequencies (the logits' strongest, engine/progress_measures.py) are a
// series of their own in red, so that the legend names them and the other bars stay muted.
export function spectrumChart(el, view) {
  const keys = new Set(view.key_frequencies);
  const isKey = view.frequencies.map((k) => keys.has(k));
  const data = [
    view.frequencies,
    view.embed_power.map((v, i) => (isKey[i] ? null : v)),
    view.embed_power.map((v, i) => (isKey[i] ? v : null)),
  ];
  const bars = uPlot.paths.bars({ size: [0.7, 48] });
  const barSeries = (label, color) => ({ label, stroke: color, fill: fade(color, 0.75), width: 1, paths: bars, points: { show: false } });
  const plot = new uPlot(
    {
      title: `Embedding W_E: Fourier power per frequency, step ${view.step.toLocaleString()}`,
      width: chartWidth(el),
      height: 240,
      series: [{ label: "k" }, barSeries("embed power", OTHER_COLOR), barSeries("key frequency", KEY_COLOR)],
      // Half a bar of room at either end; bars grow from zero.
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] } },
      axes: [{ label: "frequency k (w = 2πk / P)", space: 18, incrs: [1, 2, 5, 10, 20, 50, 100] }, { size: 60 }],
      legend: { live: true },
    },
    data,
    el,
  );
  // What is drawn, read back from the plot's own columns: each frequency's bar height and the
  // frequencies drawn as key ones.
  const drawn = plot.data;
  el.dataset.step = String(view.step);
  el.dataset.frequencies = JSON.stringify(drawn[0]);
  el.dataset.bars = JSON.stringify(drawn[0].map((_, i) => drawn[1][i] ?? drawn[2][i]));
  el.dataset.highlighted = JSON.stringify(drawn[0].filter((_, i) => drawn[2][i] != null));
  return plot;
}

// A method_comparison's median steps to generalise per configuration (learning rate, weight
// decay), the baseline and the method side by side; a censored median (at least the step budget:
// fewer than half the seeds generalised) is drawn hollow; the budget is a dashed line.
export function comparisonChart(el, comparison) {
  const points = [...new Set(comparison.configurations.map((c) => `${c.learning_rate}|${c.weight_decay}`))].sort((a, b) => {
    const [la, wa] = a.split("|").map(Number);
    const [lb, wb] = b.split("|").map(Number);
    return la - lb || wa - wb;
  });
  // Each configuration at an integer x, the baseline just left of it and the method just right.
  const sides = [["baseline", PALETTE[0], -0.15], ["method", PALETTE[4], 0.15]];
  const xs = points.flatMap((_, i) => sides.map(([, , offset]) => i + offset));
  const column = (side, censored) =>
    xs.map((x) => {
      const i = Math.round(x);
      const [, , offset] = sides.find(([s]) => s === side);
      const config = comparison.configurations.find((c) => c.side === side && `${c.learning_rate}|${c.weight_decay}` === points[i]);
      const ok = Math.abs(x - i - offset) < 1e-9 && config && config.median_steps != null && config.censored === censored;
      return ok ? config.median_steps : null;
    });
  const series = [{ label: "configuration" }];
  const data = [xs];
  for (const [side, color] of sides) {
    for (const censored of [false, true]) {
      series.push({ label: censored ? `${side} (censored)` : side, stroke: color, width: 0, paths: () => null,
        points: { show: true, size: 11, width: 2, stroke: color, fill: censored ? "#fff" : color } });
      data.push(column(side, censored));
    }
  }
  const budget = Math.max(...comparison.configurations.map((c) => c.budget));
  const drawBudget = (u) => {
    const { ctx, bbox } = u;
    const y = u.valToPos(budget, "y", true);
    ctx.save();
    ctx.strokeStyle = "rgba(120, 120, 120, 0.9)";
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(bbox.left, y);
    ctx.lineTo(bbox.left + bbox.width, y);
    ctx.stroke();
    ctx.restore();
  };
  const label = (i) => {
    const [lr, wd] = (points[i] || "").split("|");
    return points[i] ? `lr ${lr}, wd ${wd}` : "";
  };
  const plot = new uPlot(
    {
      title: `Median steps to test accuracy ${comparison.level} (dashed: the step budget)`,
      width: chartWidth(el),
      height: 300,
      series,
      scales: { x: { time: false, range: () => [-0.5, points.length - 0.5] }, y: { range: () => [0, budget * 1.08] } },
      axes: [{ label: "learning rate, weight decay", splits: () => points.map((_, i) => i), values: (u, splits) => splits.map(label) }, { label: "steps", size: 60 }],
      hooks: { draw: [drawBudget] },
    },
    data,
    el,
  );
  el.dataset.points = JSON.stringify(Object.fromEntries(series.slice(1).map((s, i) => [s.label, data[i + 1].filter((v) => v != null).length])));
  el.dataset.configurations = JSON.stringify(points.map((_, i) => label(i)));
  return plot;
}
