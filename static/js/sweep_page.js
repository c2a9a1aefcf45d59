// Sweep page: while the sweep runs (or a cancelled one's trials are still stopping) its live part, the head
// with the best trial and the trials table, is fetched every 2 s from the same templates as the first load,
// and the charts are redrawn from the trials it carries. Polling stops once the sweep has ended. Cancel and
// "Queue it again" act through the REST API. A part is swapped only when it changed and never under a
// pressed pointer (a button replaced between mousedown and mouseup loses its click), and an answer older
// than the one on the page is dropped.

import { getHTML, postJSON } from "./api.js";
import { drawCollapseChart, drawSweepCharts } from "./sweep_charts.js";
import { onSchemeChange, plotlyLoaded, showError } from "./plot_style.js";

const meta = JSON.parse(document.getElementById("sweep-meta").textContent);
const LIVE_PARTS = ["sweep-head", "sweep-trials"];
const heatX = document.getElementById("heat-x");
const heatY = document.getElementById("heat-y");
let timer = null;
let asked = 0; // refreshes started, and the latest whose answer is on the page
let shown = 0;
let pressed = false;
let paused = false; // the last poll failed (its notice shown)

const data = () => JSON.parse(document.getElementById("sweep-data").textContent);
const heat = () => ({ x: heatX.value, y: heatY.value === heatX.value ? "" : heatY.value });
const isLive = () => document.getElementById("sweep-head").dataset.live === "true";


async function drawAll() {
  try {
    await plotlyLoaded();
    await drawSweepCharts(data(), heat());
  } catch (err) {
    showError(`The charts could not be drawn: ${err.message}`);
  }
}

// only a press inside a live part holds its swap (a select's popup may swallow the pointerup)
document.addEventListener("pointerdown", (event) => {
  pressed = LIVE_PARTS.some((id) => document.getElementById(id)?.contains(event.target));
}, true);
for (const type of ["pointerup", "pointercancel", "dragend"]) document.addEventListener(type, () => { pressed = false; }, true);
window.addEventListener("blur", () => { pressed = false; }); // the window's own (released outside it)

// swaps the parts that changed; returns whether any did
function swapParts(html) {
  const box = document.createElement("div");
  box.innerHTML = html;
  const focused = document.activeElement?.id;
  let changed = false;
  for (const id of LIVE_PARTS) {
    const old = document.getElementById(id);
    const fresh = box.querySelector(`#${id}`);
    if (fresh && fresh.outerHTML !== old.outerHTML) {
      old.replaceWith(fresh);
      changed = true;
    }
  }
  // a focused button that was swapped: its fresh copy takes the focus (a keyboard user's place stays)
  if (focused && !document.activeElement?.id) document.getElementById(focused)?.focus();
  return changed;
}

async function refresh() {
  clearTimeout(timer);
  const ticket = ++asked;
  try {
    const html = await getHTML(meta.live_url);
    if (ticket < shown) return; // a later refresh already showed a newer answer, and polls on
    if (pressed) {
      timer = setTimeout(refresh, meta.poll_ms); // the next poll swaps, once the click has landed
      return;
    }
    shown = ticket;
    const changed = swapParts(html);
    if (changed || paused) document.getElementById("chart-error").hidden = true;
    paused = false;
    if (changed) await drawAll(); // the charts' data is in the trials part: unchanged, they stay as drawn (and hovered)
  } catch (err) {
    paused = true;
    showError(`Live updates paused: ${err.message}; retrying.`); // a restarting server: the next poll retries
  }
  if (isLive()) timer = setTimeout(refresh, meta.poll_ms);
}

function say(text, { error = false, runId = null } = {}) {
  const box = document.getElementById("queue-result");
  box.classList.toggle("error", error);
  box.replaceChildren(text);
  if (runId !== null) {
    const link = Object.assign(document.createElement("a"), { href: meta.run_url_template.replace("__ID__", runId), textContent: `run #${runId}` });
    box.append(" ", link, ".");
  }
  box.hidden = false;
}

async function cancelSweep(button) {
  if (!window.confirm("Cancel this sweep? Its queued trials are cancelled at once and its running ones stopped.")) return;
  button.disabled = true;
  try {
    await postJSON(button.dataset.cancelUrl);
    say("The sweep is cancelled; its running trials stop within a few seconds.");
  } catch (err) {
    button.disabled = false;
    say(`Cancel failed: ${err.message}`, { error: true });
  }
  await refresh();
}

async function queueAgain(button) {
  button.disabled = true;
  try {
    const run = await postJSON(button.dataset.url, JSON.parse(button.dataset.body));
    say("Queued the best trial's config again as", { runId: run.id });
  } catch (err) {
    say(`Queue it again failed: ${err.message}`, { error: true });
  } finally {
    button.disabled = false;
  }
}

// the head is replaced on every poll: its buttons are handled here, once
document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (button?.id === "cancel-sweep") cancelSweep(button);
  else if (button?.id === "queue-again") queueAgain(button);
});
for (const select of [heatX, heatY]) {
  select.addEventListener("change", () => drawCollapseChart(data(), heat()).catch((err) => showError(err.message)));
}
onSchemeChange(drawAll);
// titles and axis labels are shortened on a narrow chart: drawn again when the width changes
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(drawAll, 150);
});
drawAll();
if (isLive()) timer = setTimeout(refresh, meta.poll_ms);
