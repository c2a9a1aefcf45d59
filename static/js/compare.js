// Compare page: the same measures of several runs overlaid, one colour per run (colours from the server,
// so they match the table swatches).

import { getJSON } from "./api.js";
import { PLOT_CONFIG, baseLayout, reserveLegend, showError } from "./plot_style.js";

const meta = JSON.parse(document.getElementById("compare-meta").textContent);

const STAT_CHARTS = [
  { id: "compare-entropy", title: "Prediction entropy (solid) vs targets' entropy (dotted)", yTitle: "entropy (nats)",
    columns: ["entropy_mean", "target_entropy_mean"] },
  { id: "compare-onehot", title: "Near-one-hot predictions (max p > 0.99)", yTitle: "share of batch", columns: ["onehot_frac"], yRange: [0, 1.02] },
  { id: "compare-top-share", title: "Top-class share of the predicted histogram", yTitle: "share of batch", columns: ["hist_top_share"], yRange: [0, 1.02] },
  { id: "compare-loss", title: "Training loss (total objective)", yTitle: "loss (batch mean)", columns: ["loss"] },
];
const EVAL_CHARTS = [
  { id: "compare-accuracy", title: "Validation accuracy", yTitle: "accuracy (share of val set)", metric: "accuracy", yRange: [0, 1.02] },
  { id: "compare-ece", title: "Validation expected calibration error", yTitle: "ECE (15 bins, lower is better)", metric: "ece" },
];

const label = (run) => `#${run.id}${run.name ? " " + run.name : ""}`;

// one legend entry per run on every chart, even when only one run has data yet
function layoutFor(chart) {
  const layout = baseLayout({ title: chart.title, yTitle: chart.yTitle, yRange: chart.yRange });
  layout.showlegend = true;
  return reserveLegend(layout, meta.runs.map(label), document.getElementById(chart.id).clientWidth);
}

function statTraces(chart, run, stats) {
  return chart.columns.map((column, i) => ({
    type: "scatter", mode: "lines", x: stats.steps, y: stats.columns[column] ?? [],
    name: i === 0 ? label(run) : `${label(run)} targets`, legendgroup: String(run.id), showlegend: i === 0,
    line: { color: run.color, width: i === 0 ? 2 : 1.5, dash: i === 0 ? "solid" : "dot" },
    hovertemplate: `${label(run)}: %{y:.4g}<extra></extra>`,
  }));
}

function evalTrace(chart, run, evals) {
  return {
    type: "scatter", mode: "lines+markers", x: evals.map((e) => e.step), y: evals.map((e) => e.metrics[chart.metric] ?? null),
    name: label(run), line: { color: run.color, width: 2 }, hovertemplate: `${label(run)}: %{y:.4g}<extra></extra>`,
  };
}

async function start() {
  const loaded = await Promise.all(
    meta.runs.map(async (run) => ({ run, stats: await getJSON(run.stats_url), evals: await getJSON(run.evals_url) })),
  );
  for (const chart of STAT_CHARTS) {
    const traces = loaded.flatMap(({ run, stats }) => statTraces(chart, run, stats));
    Plotly.newPlot(chart.id, traces, layoutFor(chart), PLOT_CONFIG);
  }
  for (const chart of EVAL_CHARTS) {
    const traces = loaded.map(({ run, evals }) => evalTrace(chart, run, evals));
    Plotly.newPlot(chart.id, traces, layoutFor(chart), PLOT_CONFIG);
  }
}

start().catch((err) => showError(`Could not load the runs: ${err.message}`));
