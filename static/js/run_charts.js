// The run page's eight charts: drawn once with the first data, then extended with each stats or eval increment.

import {
  COLORS, PLOT_CONFIG, baseLayout, lineTrace, markerTrace, nonfiniteLines, reserveLegend, thresholdLine,
} from "./plot_style.js";

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

function withData(traces, { xs, ys }) {
  traces.forEach((trace, i) => Object.assign(trace, { x: xs[i], y: ys[i] }));
}

function statChart(spec, meta, stats) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, yRange: spec.yRange });
  for (const [y, label] of spec.thresholds?.(meta) ?? []) thresholdLine(layout, y, label);
  const traces = spec.series.map(([, name, color, dash]) => lineTrace(name, color, { dash }));
  if (spec.clipped) traces.push(markerTrace("clipped", COLORS.red));
  if (stats?.steps.length) withData(traces, statSeries(spec, stats));
  reserveLegend(layout, traces.map((t) => t.name), document.getElementById(spec.id).clientWidth);
  return { spec, traces, layout, baseShapes: [...layout.shapes], columns: new Set(spec.series.map(([c]) => c)) };
}

function evalChart(spec, records) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, y2Title: spec.y2Title });
  const traces = spec.series.map(([, name, color, dash, yaxis]) => ({ ...lineTrace(name, color, { dash, yaxis }), mode: "lines+markers" }));
  if (records.length) withData(traces, evalSeries(spec, records));
  reserveLegend(layout, traces.map((t) => t.name), document.getElementById(spec.id).clientWidth);
  return { spec, traces, layout, baseShapes: [], columns: new Set(spec.series.map(([m]) => `validation ${m}`)) };
}

function classHeatmap(numClasses) {
  const layout = baseLayout({ title: "Predicted-class histogram over time", yTitle: "predicted class" });
  layout.yaxis.dtick = numClasses <= 20 ? 1 : undefined;
  layout.hovermode = "closest";
  layout.margin.t = 50;
  const trace = {
    type: "heatmap", x: [], y: [...Array(numClasses).keys()], z: [...Array(numClasses)].map(() => []),
    zmin: 0, zmax: 1, colorscale: "Viridis", colorbar: { title: { text: "share of batch", side: "right" }, thickness: 14 },
    hovertemplate: "step %{x}<br>class %{y}: %{z:.3f}<extra></extra>",
  };
  return { trace, layout, pending: false, revision: 0, lastDraw: 0 };
}

// Builds the charts with the first data already in them (`first`: {stats, evals}, either may be
// missing), so each is drawn once; `drawn` resolves when all of them are. Later increments extend them.
export function createRunCharts(meta, first = {}) {
  const stats = first.stats ?? null;
  const nonfinite = []; // {step, column, kind}
  const seenEvalSteps = new Set();
  const freshEvals = (records) => {
    const fresh = records.filter((r) => !seenEvalSteps.has(r.step)).sort((a, b) => a.step - b.step);
    fresh.forEach((r) => seenEvalSteps.add(r.step));
    return fresh;
  };
  const firstEvals = freshEvals(first.evals ?? []);
  const statCharts = STAT_CHARTS.map((spec) => statChart(spec, meta, stats));
  const evalCharts = EVAL_CHARTS.map((spec) => evalChart(spec, firstEvals));
  const heat = classHeatmap(meta.num_classes);
  if (stats) addHeatmapRows(stats);

  function addHeatmapRows(s) {
    heat.trace.x.push(...s.steps);
    for (const row of s.class_hist ?? []) row.forEach((share, c) => heat.trace.z[c]?.push(share));
  }

  // the heatmap is redrawn whole, so increments redraw it at most twice a second
  function redrawHeatmap() {
    if (heat.pending) return;
    heat.pending = true;
    setTimeout(() => {
      heat.pending = false;
      heat.lastDraw = performance.now();
      heat.layout.datarevision = ++heat.revision; // the arrays grow in place, so tell react they changed
      Plotly.react("chart-classes", [heat.trace], heat.layout, PLOT_CONFIG);
    }, Math.max(0, heat.lastDraw + 500 - performance.now()));
  }

  const statNonfinite = (s) => Object.entries(s.nonfinite ?? {}).flatMap(([column, entries]) =>
    entries.map(([index, kind]) => ({ step: s.steps[index], column, kind })));
  const evalNonfinite = (records) => records.flatMap((r) =>
    Object.entries(r.nonfinite ?? {}).map(([metric, kind]) => ({ step: r.step, column: `validation ${metric}`, kind })));

  // the chart's own shapes plus a red line at each non-finite step of its columns (the first 200)
  function shapesOf(chart) {
    const steps = nonfinite.filter((n) => chart.columns.has(n.column)).slice(0, 200).map((n) => n.step);
    return steps.length ? [...chart.baseShapes, ...nonfiniteLines(steps)] : null;
  }

  function showNonfinite() {
    if (!nonfinite.length) return;
    const byColumn = new Map();
    for (const n of nonfinite) {
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
  }

  // fresh: [{step, column, kind}]; validation metrics are named "validation <metric>"
  function flagNonfinite(fresh) {
    if (!fresh.length) return;
    nonfinite.push(...fresh);
    for (const chart of [...statCharts, ...evalCharts]) {
      const shapes = shapesOf(chart);
      if (shapes) Plotly.relayout(chart.spec.id, { shapes });
    }
    showNonfinite();
  }

  // Increments can arrive faster than a busy tab draws (each extension redraws a whole chart): those
  // that piled up are drawn together at the next animation frame, so the charts fall at most one
  // draw behind instead of queueing draw after draw.
  let pendingStats = [];
  function addStats(s) {
    if (!s.steps.length) return;
    if (!pendingStats.length) requestAnimationFrame(drawPendingStats);
    pendingStats.push(s);
  }

  function drawPendingStats() {
    const increments = pendingStats;
    pendingStats = [];
    for (const { spec } of statCharts) {
      const parts = increments.map((s) => statSeries(spec, s));
      const xs = parts[0].xs.map((_, i) => parts.flatMap((p) => p.xs[i]));
      const ys = parts[0].ys.map((_, i) => parts.flatMap((p) => p.ys[i]));
      Plotly.extendTraces(spec.id, { x: xs, y: ys }, xs.map((_, i) => i));
    }
    increments.forEach(addHeatmapRows);
    redrawHeatmap();
    flagNonfinite(increments.flatMap(statNonfinite));
  }

  function addEvals(records) {
    const fresh = freshEvals(records);
    if (!fresh.length) return;
    for (const { spec } of evalCharts) {
      const { xs, ys } = evalSeries(spec, fresh);
      Plotly.extendTraces(spec.id, { x: xs, y: ys }, xs.map((_, i) => i));
    }
    flagNonfinite(evalNonfinite(fresh));
  }

  // the first draw: data and non-finite markers in place, one newPlot per chart
  nonfinite.push(...(stats ? statNonfinite(stats) : []), ...evalNonfinite(firstEvals));
  const drawn = [...statCharts, ...evalCharts].map((chart) => {
    chart.layout.shapes = shapesOf(chart) ?? chart.layout.shapes;
    return Plotly.newPlot(chart.spec.id, chart.traces, chart.layout, PLOT_CONFIG);
  });
  drawn.push(Plotly.newPlot("chart-classes", [heat.trace], heat.layout, PLOT_CONFIG));
  heat.lastDraw = performance.now();
  showNonfinite();

  return { addStats, addEvals, drawn: Promise.all(drawn) };
}
