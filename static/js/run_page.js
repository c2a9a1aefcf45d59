// Run page: first load of the (downsampled) history, then live increments over SSE; warnings and
// the header are re-rendered by the server (the same partials as the first page load), and each
// warning is marked on the charts.

import { followRun, getHTML, getJSON, isTerminal, postJSON } from "./api.js";
import { bindChartControls, pageSettings } from "./chart_settings.js";
import { createChartView, createRunCharts } from "./run_charts.js";
import { onSchemeChange, plotlyLoaded, showError } from "./plot_style.js";

const meta = JSON.parse(document.getElementById("chart-meta").textContent);
// a remembered x axis this run cannot have (wall time without a batch size) falls back to steps
const usableX = (x) => (document.querySelector(`#x-axis option[value="${x}"]:not([disabled])`) ? x : "step");
const view = createChartView(usableX(pageSettings().x)); // zoom, warnings and x axis, kept across redraws
let charts = null;

function swap(id, html) {
  const old = document.getElementById(id);
  const box = document.createElement("div");
  box.innerHTML = html.trim();
  const fresh = box.querySelector(`#${id}`);
  if (old && fresh) old.replaceWith(fresh);
}

function knownWarningIds() {
  const attr = document.getElementById("warnings")?.dataset.warningIds ?? "";
  return new Set(attr.split(",").filter(Boolean).map(Number));
}

async function refreshWarnings() {
  swap("warnings", await getHTML(meta.warnings_partial_url));
}

// the warnings the page was served with (templates/runs/_warnings.html), as the API gives them
function warningsShown() {
  return [...document.querySelectorAll("#warnings article[data-warning-id]")].map((card) => ({
    id: Number(card.dataset.warningId), kind: card.dataset.kind, severity: card.dataset.severity,
    step: Number(card.dataset.step), message: card.querySelector(".message")?.textContent ?? "",
  }));
}

// the warnings already shown go into the view first, so each chart is drawn once with their marks
// (marking them after the first draw relayouted every chart again: ~110 ms of a cached visit)
function chartsWith(first) {
  for (const w of warningsShown()) if (!view.warnings.has(w.id)) view.warnings.set(w.id, w);
  return createRunCharts(meta, first, view);
}

let shownStatus = meta.status;
async function onStatus(status) {
  const steps = document.querySelector("#run-header [data-field=steps]");
  if (steps) steps.textContent = status.steps;
  if (status.status !== shownStatus) {
    shownStatus = status.status;
    swap("run-header", await getHTML(meta.header_partial_url));
  }
}

// the rows of a stats answer after step `after` (null: none)
function rowsAfter(s, after) {
  const from = s.steps.findIndex((step) => step > after);
  if (from <= 0) return from === 0 ? s : null;
  const slice = (obj) => Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, v.slice(from)]));
  const nonfinite = Object.fromEntries(Object.entries(s.nonfinite ?? {}).map(([column, entries]) =>
    [column, entries.filter(([i]) => i >= from).map(([i, kind]) => [i - from, kind])]));
  const rows = { steps: s.steps.slice(from), epochs: s.epochs?.slice(from), class_hist: s.class_hist?.slice(from) };
  return { ...s, ...rows, columns: slice(s.columns), nonfinite };
}

function showBuckets(stats) {
  if (!stats.downsampled) return;
  const note = document.getElementById("downsample-note");
  note.textContent = `History shown in buckets of ${stats.bucket_size} batches.`;
  note.hidden = false;
}

// This module runs as soon as it has loaded (async), while the browser may still be compiling the
// deferred plotly.min.js: the first data is requested meanwhile, the charts drawn once both are in.
async function start() {
  const first = Promise.all([getJSON(meta.stats_url), getJSON(meta.evals_url)]);
  first.catch(() => {}); // reported below, once the (empty) charts are there
  await plotlyLoaded();
  let stats, evals;
  try {
    [stats, evals] = await first;
  } catch (err) {
    charts = chartsWith({});
    throw err;
  }
  showBuckets(stats); // before the charts: it may move them
  charts = chartsWith({ stats, evals });
  charts.drawn.then(() => {
    document.body.dataset.chartsReady = "1"; // every chart shows its first data (tests and benchmarks wait for it)
  });
  if (isTerminal(stats.status) && isTerminal(meta.status)) return;

  // A live page's charts grow by every batch; past meta.live_points_limit live points they are drawn
  // afresh from the downsampled history (the whole run, every spike kept), so a page left open stays light.
  let livePoints = 0;
  let held = null; // increments that arrive while the history is fetched again
  async function redrawFromHistory() {
    held = [];
    livePoints = 0; // also after a failure: tried again that many points later
    let history = null;
    try {
      history = await getJSON(meta.stats_url);
    } finally {
      const waiting = held;
      held = null;
      if (history) {
        charts.stop();
        showBuckets(history);
        charts = chartsWith({ stats: history, evals });
      }
      for (const s of waiting) {
        const rows = history ? rowsAfter(s, history.last_step) : s;
        if (rows) charts.addStats(rows);
      }
    }
  }
  followRun(meta.events_url, stats.last_step, {
    stats: (s) => {
      if (held) return held.push(s);
      charts.addStats(s);
      livePoints += s.steps.length;
      if (livePoints > meta.live_points_limit) redrawFromHistory().catch((err) => showError(`Could not reload the charts: ${err.message}`));
    },
    eval: (record) => {
      // a stream opened by step sends the evaluations from the first: those fetched above come again
      if (evals.some((e) => e.step === record.step)) return;
      evals.push(record);
      charts.addEvals([record]);
    },
    warning: (w) => {
      charts.addWarnings([w]);
      if (!knownWarningIds().has(w.id)) refreshWarnings();
    },
    status: onStatus,
  });
}

bindChartControls({
  onChart: (id, settings) => charts?.setSettings(id, settings),
  onPage: (settings) => charts?.setXMode(usableX(settings.x)),
});
const xSelect = document.getElementById("x-axis");
if (xSelect) xSelect.value = view.x;
onSchemeChange(() => charts?.redraw());

document.addEventListener("click", async (event) => {
  const apply = event.target.closest(".apply-advice");
  const cancel = event.target.closest("#cancel-button");
  const onChart = event.target.closest(".chart-link[data-warning-id]");
  if (onChart) {
    charts?.focusWarning(Number(onChart.dataset.warningId)); // the link itself scrolls to the chart
  } else if (event.target.closest("#reset-zoom")) {
    view.zoom.reset();
  } else if (apply) {
    apply.disabled = true;
    try {
      const run = await postJSON(apply.dataset.url, { warning_id: Number(apply.dataset.warningId) });
      window.location.assign(meta.run_url_template.replace("__ID__", String(run.id)));
    } catch (err) {
      const box = apply.parentElement.querySelector(".apply-error");
      box.textContent = `Could not apply the advice: ${err.message}`;
      box.hidden = false;
      apply.disabled = false;
    }
  } else if (cancel) {
    cancel.disabled = true;
    try {
      await postJSON(cancel.dataset.cancelUrl);
      swap("run-header", await getHTML(meta.header_partial_url));
    } catch (err) {
      showError(`Could not cancel: ${err.message}`);
      cancel.disabled = false;
    }
  }
});

start().catch((err) => showError(`Could not load the charts: ${err.message}`));
