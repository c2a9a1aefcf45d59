// The run page's eight charts: built empty, then extended with each stats or eval increment.

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

function statChart(spec, meta) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, yRange: spec.yRange });
  for (const [y, label] of spec.thresholds?.(meta) ?? []) thresholdLine(layout, y, label);
  const traces = spec.series.map(([, name, color, dash]) => lineTrace(name, color, { dash }));
  if (spec.clipped) traces.push(markerTrace("clipped", COLORS.red));
  reserveLegend(layout, traces.map((t) => t.name), document.getElementById(spec.id).clientWidth);
  Plotly.newPlot(spec.id, traces, layout, PLOT_CONFIG);
  return { spec, baseShapes: [...layout.shapes], columns: new Set(spec.series.map(([c]) => c)) };
}

function evalChart(spec) {
  const layout = baseLayout({ title: spec.title, yTitle: spec.yTitle, y2Title: spec.y2Title });
  const traces = spec.series.map(([, name, color, dash, yaxis]) => ({ ...lineTrace(name, color, { dash, yaxis }), mode: "lines+markers" }));
  reserveLegend(layout, traces.map((t) => t.name), document.getElementById(spec.id).clientWidth);
  Plotly.newPlot(spec.id, traces, layout, PLOT_CONFIG);
  return { spec, baseShapes: [], columns: new Set(spec.series.map(([m]) => `validation ${m}`)) };
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
  Plotly.newPlot("chart-classes", [trace], layout, PLOT_CONFIG);
  return { trace, layout, pending: false, revision: 0 };
}

export function createRunCharts(meta) {
  const statCharts = STAT_CHARTS.map((spec) => statChart(spec, meta));
  const evalCharts = EVAL_CHARTS.map(evalChart);
  const heat = classHeatmap(meta.num_classes);
  const nonfinite = []; // {step, column, kind}
  const seenEvalSteps = new Set();

  function redrawHeatmap() {
    if (heat.pending) return;
    heat.pending = true;
    setTimeout(() => {
      heat.pending = false;
      heat.layout.datarevision = ++heat.revision; // the arrays grow in place, so tell react they changed
      Plotly.react("chart-classes", [heat.trace], heat.layout, PLOT_CONFIG);
    }, 500);
  }

  // fresh: [{step, column, kind}]; validation metrics are named "validation <metric>"
  function flagNonfinite(fresh) {
    if (!fresh.length) return;
    nonfinite.push(...fresh);
    for (const chart of [...statCharts, ...evalCharts]) {
      const steps = nonfinite.filter((n) => chart.columns.has(n.column)).slice(0, 200).map((n) => n.step);
      if (steps.length) Plotly.relayout(chart.spec.id, { shapes: [...chart.baseShapes, ...nonfiniteLines(steps)] });
    }
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

  function addStats(stats) {
    const steps = stats.steps;
    if (!steps.length) return;
    for (const { spec } of statCharts) {
      const xs = spec.series.map(() => steps);
      const ys = spec.series.map(([column]) => stats.columns[column] ?? steps.map(() => null));
      if (spec.clipped) {
        const clipped = stats.columns.clipped ?? [];
        const grad = stats.columns.grad_norm ?? [];
        const hits = steps.map((_, i) => i).filter((i) => clipped[i] >= 0.5);
        xs.push(hits.map((i) => steps[i]));
        ys.push(hits.map((i) => grad[i]));
      }
      Plotly.extendTraces(spec.id, { x: xs, y: ys }, xs.map((_, i) => i));
    }
    heat.trace.x.push(...steps);
    for (const row of stats.class_hist ?? []) row.forEach((share, c) => heat.trace.z[c]?.push(share));
    redrawHeatmap();
    flagNonfinite(Object.entries(stats.nonfinite ?? {}).flatMap(([column, entries]) =>
      entries.map(([index, kind]) => ({ step: steps[index], column, kind }))));
  }

  function addEvals(records) {
    const fresh = records.filter((r) => !seenEvalSteps.has(r.step)).sort((a, b) => a.step - b.step);
    if (!fresh.length) return;
    fresh.forEach((r) => seenEvalSteps.add(r.step));
    for (const { spec } of evalCharts) {
      const xs = spec.series.map(() => fresh.map((r) => r.step));
      const ys = spec.series.map(([metric]) => fresh.map((r) => r.metrics[metric] ?? null));
      Plotly.extendTraces(spec.id, { x: xs, y: ys }, xs.map((_, i) => i));
    }
    flagNonfinite(fresh.flatMap((r) =>
      Object.entries(r.nonfinite ?? {}).map(([metric, kind]) => ({ step: r.step, column: `validation ${metric}`, kind }))));
  }

  return { addStats, addEvals };
}
