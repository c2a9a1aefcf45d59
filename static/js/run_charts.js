// The run page's eight charts: drawn once with the first data, then extended with each stats or eval
// increment. When each chart is drawn and redrawn is chart_scheduler.js's business.

import { scheduleCharts } from "./chart_scheduler.js";
import {
  COLORS, NONFINITE_AXIS, PLOT_CONFIG, baseLayout, lineTrace, markerTrace, nonfiniteSegments, nonfiniteTrace,
  reserveLegend, thresholdLine,
} from "./plot_style.js";

const MAX_NONFINITE_MARKERS = 200; // per chart: more would hide the data
const HEATMAP_INTERVAL_MS = 500; // the heatmap is redrawn whole, so at most twice a second

const STAT_CHARTS = [
  {
    id: "chart-entropy", title: "Prediction entropy vs target entropy", yTitle: "entropy (nats)",
    series: [
      ["entropy_mean", "mean", COLORS.blue], ["entropy_p10", "10th percentile", COLORS.teal],
      ["entropy_min", "min", COLORS.purple], ["target_entropy_mean", "targets' mean", COLORS.grey, "dash"],
    ],
    thresholds: (m) => [[m.min_entropy, `h_min = ${m.min_entropy} nats`]],
  },
  {
    id: "chart-logits", title: "Raw logits", yTitle: "logit (raw, before temperature)",
    series: [["logit_max", "max", COLORS.red], ["logit_min", "min", COLORS.blue], ["logit_range", "range (max − min)", COLORS.grey, "dash"]],
  },
  {
    id: "chart-confidence", title: "Near-one-hot predictions and confidence", yTitle: "share of batch", yRange: [0, 1.02],
    series: [
      ["onehot_frac", "one-hot predictions (max p > 0.99)", COLORS.red], ["target_onehot_frac", "one-hot targets", COLORS.grey, "dash"],
      ["maxprob_mean", "mean max-probability", COLORS.blue], ["hist_top_share", "top-class share", COLORS.orange],
    ],
  },
  {
    id: "chart-loss", title: "Loss terms", yTitle: "loss (batch mean)",
    series: [
      ["loss", "total", "#1d2330"], ["loss_ce", "soft cross-entropy", COLORS.blue],
      ["loss_entropy", "entropy penalty", COLORS.orange], ["loss_final_l2", "final-layer L2", COLORS.green],
    ],
  },
  {
    id: "chart-grad", title: "Gradient norm (before clipping)", yTitle: "global grad norm (L2)",
    series: [["grad_norm", "grad norm", COLORS.blue]],
    clipped: true,
    thresholds: (m) => (m.max_grad_norm == null ? [] : [[m.max_grad_norm, `clip at ${m.max_grad_norm}`]]),
  },
];

const EVAL_CHARTS = [
  {
    id: "chart-validation", title: "Validation: loss and accuracy", yTitle: "loss (nats)", y2Title: "accuracy (share of val set)",
    series: [
      ["objective", "objective", "#1d2330"], ["soft_ce", "soft cross-entropy", COLORS.blue],
      ["kl", "KL(target ‖ prediction)", COLORS.purple], ["accuracy", "accuracy (right axis)", COLORS.green, "dot", "y2"],
    ],
  },
  {
    id: "chart-calibration", title: "Validation calibration", yTitle: "calibration error (lower is better)",
    series: [["ece", "ECE (15 bins)", COLORS.red], ["brier", "Brier score", COLORS.brown]],
  },
];

// Per trace of a stat chart, the x and y values of one stats answer (the clipped markers last).
function statSeries(spec, stats) {
  const steps = stats.steps;
  const xs = spec.series.map(() => steps);
  const ys = spec.series.map(([column]) => stats.columns[column] ?? steps.map(() => null));
  if (spec.clipped) {
    const clipped = stats.columns.clipped ?? [];
    const grad = stats.columns.grad_norm ?? [];
    const hits = steps.map((_, i) => i).filter((i) => clipped[i] >= 0.5);
    xs.push(hits.map((i) => steps[i]));
    ys.push(hits.map((i) => grad[i]));
  }
  return { xs, ys };
}

function evalSeries(spec, records) {
  return {
    xs: spec.series.map(() => records.map((r) => r.step)),
    ys: spec.series.map(([metric]) => records.map((r) => r.metrics[metric] ?? null)),
  };
}

// [{step, column, kind}] of a stats answer or of eval records (their metrics named "validation <metric>")
const statNonfinite = (s) => Object.entries(s.nonfinite ?? {}).flatMap(([column, entries]) =>
  entries.map(([index, kind]) => ({ step: s.steps[index], column, kind })));
const evalNonfinite = (records) => records.flatMap((r) =>
  Object.entries(r.nonfinite ?? {}).map(([metric, kind]) => ({ step: r.step, column: `validation ${metric}`, kind })));

// A line chart fed by increments (stats answers or lists of eval records): `seriesOf` gives each
// trace's new values, `nonfiniteOf` the increment's non-finite entries, marked on every chart showing
// their column. `first` holds the increments it is first drawn with.
function lineChart(id, layout, traces, { seriesOf, nonfiniteOf, columns, first }) {
  reserveLegend(layout, traces.map((t) => t.name), document.getElementById(id).clientWidth);
  traces.push(nonfiniteTrace());
  layout.yaxis3 = NONFINITE_AXIS;
  const marked = new Set();

  function values(increments) {
    const parts = increments.map((inc) => {
      const { xs, ys } = seriesOf(inc);
      const fresh = nonfiniteOf(inc).filter((n) => columns.has(n.column) && !marked.has(n.step)).map((n) => n.step);
      const steps = [...new Set(fresh)].slice(0, MAX_NONFINITE_MARKERS - marked.size);
      steps.forEach((s) => marked.add(s));
      const segments = nonfiniteSegments(steps);
      return { xs: [...xs, segments.x], ys: [...ys, segments.y] };
    });
    return { xs: traces.map((_, i) => parts.flatMap((p) => p.xs[i])), ys: traces.map((_, i) => parts.flatMap((p) => p.ys[i])) };
  }

  return {
    id,
    draw(increments) {
      const { xs, ys } = values([...first, ...increments]);
      traces.forEach((trace, i) => Object.assign(trace, { x: xs[i], y: ys[i] }));
      return Plotly.react(id, traces, layout, PLOT_CONFIG); // a new plot, or one drawn afresh keeping the user's zoom
    },
    extend(increments) {
      const { xs, ys } = values(increments);
      Plotly.extendTraces(id, { x: xs, y: ys }, xs.map((_, i) => i));
    },
  };
}

function statChart(spec, meta, first) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, yRange: spec.yRange });
  for (const [y, label] of spec.thresholds?.(meta) ?? []) thresholdLine(layout, y, label);
  const traces = spec.series.map(([, name, color, dash]) => lineTrace(name, color, { dash }));
  if (spec.clipped) traces.push(markerTrace("clipped", COLORS.red));
  const columns = new Set(spec.series.map(([c]) => c));
  return lineChart(spec.id, layout, traces, { seriesOf: (s) => statSeries(spec, s), nonfiniteOf: statNonfinite, columns, first });
}

function evalChart(spec, first) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, y2Title: spec.y2Title });
  const traces = spec.series.map(([, name, color, dash, yaxis]) => ({ ...lineTrace(name, color, { dash, yaxis }), mode: "lines+markers" }));
  const columns = new Set(spec.series.map(([m]) => `validation ${m}`));
  return lineChart(spec.id, layout, traces, { seriesOf: (records) => evalSeries(spec, records), nonfiniteOf: evalNonfinite, columns, first });
}

// the predicted-class histogram, one column per step; redrawn whole, so rate-limited
function heatmapChart(numClasses, first) {
  const layout = baseLayout({ title: "Predicted-class histogram over time", yTitle: "predicted class" });
  layout.yaxis.dtick = numClasses <= 20 ? 1 : undefined;
  layout.hovermode = "closest";
  layout.margin.t = 50;
  const trace = {
    type: "heatmap", x: [], y: [...Array(numClasses).keys()], z: [...Array(numClasses)].map(() => []),
    zmin: 0, zmax: 1, colorscale: "Viridis", colorbar: { title: { text: "share of batch", side: "right" }, thickness: 14 },
    hovertemplate: "step %{x}<br>class %{y}: %{z:.3f}<extra></extra>",
  };
  let revision = 0;
  const add = (increments) => increments.forEach((s) => {
    trace.x.push(...s.steps);
    for (const row of s.class_hist ?? []) row.forEach((share, c) => trace.z[c]?.push(share));
  });
  return {
    id: "chart-classes",
    minIntervalMs: HEATMAP_INTERVAL_MS,
    draw(increments) {
      add([...first, ...increments]);
      return Plotly.react("chart-classes", [trace], layout, PLOT_CONFIG);
    },
    extend(increments) {
      add(increments);
      layout.datarevision = ++revision; // the arrays grow in place, so tell react they changed
      Plotly.react("chart-classes", [trace], layout, PLOT_CONFIG);
    },
  };
}

// The notice above the charts: which measures were NaN or infinite, from which step, how often.
function nonfiniteNotice() {
  const byColumn = new Map();
  return (fresh) => {
    if (!fresh.length) return;
    for (const n of fresh) {
      const entry = byColumn.get(n.column) ?? { first: n.step, count: 0, kinds: new Set() };
      entry.first = Math.min(entry.first, n.step);
      entry.count += 1;
      entry.kinds.add(n.kind);
      byColumn.set(n.column, entry);
    }
    const parts = [...byColumn].map(([column, e]) =>
      `${column}: ${[...e.kinds].join("/")} in ${e.count} batch${e.count === 1 ? "" : "es"} from step ${e.first}`);
    const box = document.getElementById("nonfinite");
    const more = parts.length > 6 ? `; and ${parts.length - 6} more measures` : "";
    box.textContent = `Non-finite values (red dotted lines on the charts). ${parts.slice(0, 6).join("; ")}${more}.`;
    box.hidden = false;
  };
}

// Builds the charts with the first data in them (`first`: {stats, evals}, either may be missing), so
// each is drawn once; `drawn` resolves when all of them are. Later increments extend them.
export function createRunCharts(meta, first = {}) {
  const seenEvalSteps = new Set();
  const freshEvals = (records) => {
    const fresh = records.filter((r) => !seenEvalSteps.has(r.step)).sort((a, b) => a.step - b.step);
    fresh.forEach((r) => seenEvalSteps.add(r.step));
    return fresh;
  };
  const firstStats = first.stats?.steps.length ? [first.stats] : [];
  const firstEvals = freshEvals(first.evals ?? []);
  const notice = nonfiniteNotice();
  notice([...firstStats.flatMap(statNonfinite), ...evalNonfinite(firstEvals)]);

  const stat = STAT_CHARTS.map((spec) => statChart(spec, meta, firstStats));
  const evals = EVAL_CHARTS.map((spec) => evalChart(spec, firstEvals.length ? [firstEvals] : []));
  const heat = heatmapChart(meta.num_classes, firstStats);
  // in page order (templates/runs/detail.html)
  const scheduler = scheduleCharts([stat[0], stat[1], stat[2], heat, stat[3], stat[4], ...evals]);

  function addStats(s) {
    if (!s.steps.length) return;
    for (const chart of [...stat, heat]) scheduler.push(chart.id, s);
    notice(statNonfinite(s));
  }

  function addEvals(records) {
    const fresh = freshEvals(records);
    if (!fresh.length) return;
    for (const chart of evals) scheduler.push(chart.id, fresh);
    notice(evalNonfinite(fresh));
  }

  return { addStats, addEvals, drawn: scheduler.drawn, stop: scheduler.stop };
}
