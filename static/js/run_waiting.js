// Run page while nothing is drawn yet, and while it runs: the header of a queued or preparing run is
// refreshed every 2 s (its place in the queue, who will take it), the Duration of a running run ticks
// each second, and a finished run's empty warnings panel says that none were raised.

import { getHTML, isTerminal } from "./api.js";

const meta = JSON.parse(document.getElementById("chart-meta").textContent);
const REFRESH_MS = 2000;

function replaceById(id, html) {
  const box = document.createElement("div");
  box.innerHTML = html.trim();
  const fresh = box.querySelector(`#${id}`);
  const old = document.getElementById(id);
  if (old && fresh) old.replaceWith(fresh);
}

function formatDuration(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// the server's elapsed time at render, moved on by this page's own monotonic clock (no clock skew)
let base = null;
function tick() {
  const cell = document.querySelector("#run-header [data-field=duration][data-elapsed-s]");
  if (!cell) {
    base = null;
    return;
  }
  const elapsed = Number(cell.dataset.elapsedS);
  if (!base || base.elapsed !== elapsed) base = { elapsed, at: performance.now() };
  cell.textContent = formatDuration(elapsed + (performance.now() - base.at) / 1000);
}

function header() {
  return document.getElementById("run-header");
}

async function refreshWhileWaiting() {
  const h = header();
  const waiting = h?.dataset.status === "queued" || document.querySelector("#waiting[data-preparing]");
  if (waiting && !document.hidden) {
    try {
      replaceById("run-header", await getHTML(meta.header_partial_url));
    } catch {
      // the next refresh tries again; the event stream still reports the status
    }
  }
}

let saidNone = false;
async function noneRaisedOnceFinished() {
  if (saidNone || !isTerminal(header()?.dataset.status) || !document.getElementById("no-warnings")) return;
  saidNone = true;
  replaceById("warnings", await getHTML(meta.warnings_partial_url));
}

setInterval(tick, 1000);
setInterval(() => {
  refreshWhileWaiting();
  noneRaisedOnceFinished().catch(() => {});
}, REFRESH_MS);
