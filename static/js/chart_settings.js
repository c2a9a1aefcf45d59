// How each run-page chart is viewed (log y axis, smoothing, outlier range, logits / T) and the page's x
// axis: remembered in localStorage per chart, so every run opens the way it was last looked at. The
// controls themselves are rendered by templates/runs/detail.html.

const KEY = "collapsewatch.charts.v1";
const PAGE = "page"; // the entry holding the page-wide settings
export const CHART_DEFAULTS = { log: false, ema: 0, outliers: false, scaled: false };
const PAGE_DEFAULTS = { x: "step" };
export const X_MODES = ["step", "epoch", "time"];

function readAll() {
  try {
    const all = JSON.parse(localStorage.getItem(KEY) ?? "{}");
    return all && typeof all === "object" ? all : {};
  } catch {
    return {}; // unreadable (or storage refused): the defaults
  }
}

function write(id, settings) {
  const all = readAll();
  all[id] = settings;
  try {
    localStorage.setItem(KEY, JSON.stringify(all));
  } catch {
    // private mode or full: the setting holds for this page only
  }
}

const clampEma = (v) => (Number.isFinite(v) ? Math.min(0.99, Math.max(0, v)) : 0);

export function chartSettings(id) {
  const s = { ...CHART_DEFAULTS, ...(readAll()[id] ?? {}) };
  return { log: s.log === true, ema: clampEma(Number(s.ema)), outliers: s.outliers === true, scaled: s.scaled === true };
}

export function pageSettings() {
  const s = { ...PAGE_DEFAULTS, ...(readAll()[PAGE] ?? {}) };
  return { x: X_MODES.includes(s.x) ? s.x : "step" };
}

const emaText = (v) => (v > 0 ? v.toFixed(2) : "off");

// Sets each chart's controls (`.chart-tools[data-chart]`) and the page's x-axis select to what is
// remembered, and reports each change: onChart(id, settings), onPage(settings).
export function bindChartControls({ onChart, onPage }) {
  for (const tools of document.querySelectorAll(".chart-tools[data-chart]")) {
    const id = tools.dataset.chart;
    const settings = chartSettings(id);
    const output = tools.querySelector("output");
    for (const input of tools.querySelectorAll("input[data-setting]")) {
      const name = input.dataset.setting;
      if (input.type === "checkbox") input.checked = settings[name];
      else input.value = String(settings[name]);
      if (output && name === "ema") output.textContent = emaText(settings.ema);
      input.addEventListener(input.type === "range" ? "input" : "change", () => {
        settings[name] = input.type === "checkbox" ? input.checked : clampEma(Number(input.value));
        if (output && name === "ema") output.textContent = emaText(settings.ema);
        write(id, { ...settings });
        onChart(id, { ...settings });
      });
    }
  }
  const select = document.getElementById("x-axis");
  if (select) {
    const settings = pageSettings();
    select.value = settings.x;
    select.addEventListener("change", () => {
      settings.x = X_MODES.includes(select.value) ? select.value : "step";
      write(PAGE, { ...settings });
      onPage({ ...settings });
    });
  }
}
