// Compare page: the same measures of several runs overlaid, one colour per run (colours from the server,
// so they match the table swatches), plus one chart of any recorded series the user picks. Charts follow
// the system's light or dark scheme.

import { getJSON } from "./api.js";
import { PLOT_CONFIG, baseLayout, onSchemeChange, reserveLegend, schemeLayout, schemeUpdate, showError } from "./plot_style.js";

const meta = JSON.parse(document.getElementById("compare-meta").textContent);

// columns[1], when given, is drawn dotted beside columns[0]: the targets' entropy, the smallest logit
const STAT_CHARTS = [
  { id: "compare-logits", title: "Raw logits: largest (solid), smallest (dotted)", yTitle: "logit (before temperature)",
    columns: ["logit_max", "logit_min"], second: "min" },
  { id: "compare-grad", title: "Gradient norm before clipping", yTitle: "global L2 norm (log scale)", columns: ["grad_norm"], log: true },
  { id: "compare-entropy", title: "Prediction entropy (solid) vs targets' entropy (dotted)", yTitle: "entropy (nats)",
    columns: ["entropy_mean", "target_entropy_mean"], second: "targets" },
  { id: "compare-onehot", title: "Near-one-hot predictions (max p > 0.99)", yTitle: "share of batch", columns: ["onehot_frac"], yRange: [0, 1.02] },
  { id: "compare-top-share", title: "Top-class share of the predicted histogram", yTitle: "share of batch", columns: ["hist_top_share"], yRange: [0, 1.02] },
  { id: "compare-loss", title: "Training loss (total objective)", yTitle: "loss (batch mean)", columns: ["loss"] },
];
const EVAL_CHARTS = [
  { id: "compare-accuracy", title: "Validation accuracy", yTitle: "accuracy (share of val set)", metric: "accuracy", yRange: [0, 1.02] },
  { id: "compare-ece", title: "Validation expected calibration error", yTitle: "ECE (15 bins, lower is better)", metric: "ece" },
];
const SERIES_CHART = "compare-series";

const label = (run) => `#${run.id}${run.name ? " " + run.name : ""}`;
const drawn = new Map(); // chart id -> its layout, to recolour on a scheme change

// one legend entry per run on every chart, even when only one run has data yet
function layoutFor(chart) {
  const layout = baseLayout({ title: chart.title, yTitle: chart.yTitle, yRange: chart.yRange });
  layout.showlegend = true;
  if (chart.log) Object.assign(layout.yaxis, { type: "log", dtick: "D2" }); // minor labels at 2 and 5 only
  const width = document.getElementById(chart.id).clientWidth;
  if (width < 520) layout.title.font.size = 13; // a phone: the whole title still fits
  return schemeLayout(reserveLegend(layout, meta.runs.map(label), width));
}

function draw(chart, traces) {
  const layout = layoutFor(chart);
  drawn.set(chart.id, layout);
  return Plotly.react(chart.id, traces, layout, PLOT_CONFIG);
}

function statTraces(chart, run, stats) {
  return chart.columns.map((column, i) => ({
    type: "scatter", mode: "lines", x: stats.steps, y: stats.columns[column] ?? [],
    name: i === 0 ? label(run) : `${label(run)} ${chart.second}`, legendgroup: String(run.id), showlegend: i === 0,
    line: { color: run.color, width: i === 0 ? 2 : 1.5, dash: i === 0 ? "solid" : "dot" },
    hovertemplate: `${label(run)}${i === 0 ? "" : " " + chart.second}: %{y:.4g}<extra></extra>`,
  }));
}

function evalTrace(metric, run, evals) {
  return {
    type: "scatter", mode: "lines+markers", x: evals.map((e) => e.step), y: evals.map((e) => e.metrics[metric] ?? null),
    name: label(run), line: { color: run.color, width: 2 }, hovertemplate: `${label(run)}: %{y:.4g}<extra></extra>`,
  };
}

// --- the series picker: any batch statistic or evaluation metric, kept in the URL (?series=batch:lr) -----
const picker = document.getElementById("compare-series-select");
const logBox = document.getElementById("compare-series-log");

function drawSeries(loaded) {
  const [kind, name] = picker.value.split(":");
  const chart = {
    id: SERIES_CHART, log: logBox.checked,
    title: kind === "eval" ? `Validation ${name} (each evaluation)` : `${name} (each recorded batch)`,
    yTitle: logBox.checked ? `${name} (log scale)` : name,
  };
  const traces = kind === "eval"
    ? loaded.map(({ run, evals }) => evalTrace(name, run, evals))
    : loaded.flatMap(({ run, stats }) => statTraces({ columns: [name] }, run, stats));
  const url = new URL(window.location.href);
  url.searchParams.set("series", picker.value);
  url.searchParams.set("log", logBox.checked ? "1" : "0");
  window.history.replaceState(null, "", url);
  return draw(chart, traces);
}

function restorePicker() {
  const params = new URL(window.location.href).searchParams;
  const wanted = params.get("series");
  picker.value = [...picker.options].some((o) => o.value === wanted) ? wanted : "batch:entropy_mean";
  logBox.checked = params.get("log") === "1";
}

async function start() {
  restorePicker();
  const loaded = await Promise.all(
    meta.runs.map(async (run) => ({ run, stats: await getJSON(run.stats_url), evals: await getJSON(run.evals_url) })),
  );
  await drawSeries(loaded);
  picker.addEventListener("change", () => drawSeries(loaded));
  logBox.addEventListener("change", () => drawSeries(loaded));
  for (const chart of STAT_CHARTS) draw(chart, loaded.flatMap(({ run, stats }) => statTraces(chart, run, stats)));
  for (const chart of EVAL_CHARTS) draw(chart, loaded.map(({ run, evals }) => evalTrace(chart.metric, run, evals)));
}

onSchemeChange((colors) => {
  for (const [id, layout] of drawn) Plotly.relayout(id, schemeUpdate(layout, colors));
});

start().catch((err) => showError(`Could not load the runs: ${err.message}`));
