// Shared look of every chart: fonts, palette, legend placement, axis titles with units, and the marks
// drawn on them (thresholds, warnings, epoch boundaries, non-finite steps).

export const COLORS = {
  blue: "#1f77b4",
  orange: "#ff7f0e",
  green: "#2ca02c",
  red: "#d62728",
  purple: "#9467bd",
  brown: "#8c564b",
  pink: "#e377c2",
  grey: "#555555",
  teal: "#17becf",
};

// as static/css/app.css's --info, --warn and --bad, so a card's badge and its marks agree
export const SEVERITY_COLORS = { info: "#1f5fbf", warning: "#a65f00", critical: "#b42318" };
const SEVERITY_RANK = { info: 0, warning: 1, critical: 2 };

const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 13, color: "#1d2330" };

// No "Share chart..." (Plotly 4 shows it by default): it would upload the run's data to a third party.
export const PLOT_CONFIG = {
  responsive: true,
  displaylogo: false,
  showSendToCloud: false,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "sendChartToCloud"],
};

// Legend sits between the title and the plot area, so it never covers data.
// y2Range: the right axis's range (a share's by default); null: autorange
export function baseLayout({ title, xTitle = "step (batch)", yTitle, y2Title = null, yRange = null, y2Range = [0, 1.02] }) {
  const layout = {
    title: { text: title, x: 0.01, xanchor: "left", y: 0.97, yanchor: "top", font: { size: 16 } },
    font: FONT,
    margin: { l: 70, r: y2Title ? 70 : 24, t: 86, b: 56 },
    legend: { orientation: "h", x: 0, xanchor: "left", y: 1.0, yanchor: "bottom", font: { size: 13 } },
    hovermode: "x unified",
    // "allow": the margins hold the tick labels, so Plotly need not measure each one on every redraw
    xaxis: { title: { text: xTitle }, zeroline: false, automargin: true, ticklabeloverflow: "allow" },
    yaxis: { title: { text: yTitle }, zeroline: false, automargin: true, ticklabeloverflow: "allow" },
    shapes: [],
    annotations: [],
    uirevision: "keep", // user zoom survives live updates
  };
  if (yRange) layout.yaxis.range = yRange;
  if (y2Title) {
    layout.yaxis2 = { title: { text: y2Title }, overlaying: "y", side: "right", zeroline: false, automargin: true,
      tickmode: "auto", showgrid: false, ticklabeloverflow: "allow" };
    if (y2Range) layout.yaxis2.range = y2Range;
  }
  return layout;
}

export function lineTrace(name, color, { dash = "solid", width = 2, yaxis = "y", legendgroup } = {}) {
  return {
    type: "scatter", mode: "lines", name, x: [], y: [], yaxis, legendgroup,
    line: { color, dash, width }, connectgaps: false,
    hovertemplate: `%{y:.4g}`,
  };
}

export function markerTrace(name, color, symbol = "x") {
  return { type: "scatter", mode: "markers", name, x: [], y: [], marker: { color, symbol, size: 7 }, hovertemplate: "%{y:.4g}" };
}

// The legend sits above the plot area and grows upwards as it wraps: reserve the rows it will need
// at this width (about 7.5 px per character at 13 px, plus the line sample), so it never meets the title.
export function reserveLegend(layout, names, width) {
  const usable = Math.max(200, width - layout.margin.l - layout.margin.r);
  let rows = names.length ? 1 : 0;
  let x = 0;
  for (const name of names) {
    const w = 46 + 7.5 * name.length;
    if (x > 0 && x + w > usable) {
      rows += 1;
      x = 0;
    }
    x += w;
  }
  layout.margin.t = 50 + 22 * rows;
  return layout;
}

// A labelled horizontal threshold line across the whole x range (unlabelled with an empty label).
export function thresholdLine(layout, y, label, color = COLORS.red) {
  layout.shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y, y1: y, line: { color, width: 1.5, dash: "dash" } });
  if (!label) return;
  layout.annotations.push({
    xref: "paper", x: 1, xanchor: "right", yref: "y", y, yanchor: "bottom", text: label, showarrow: false,
    font: { size: 12, color }, bgcolor: "rgba(255,255,255,0.8)",
  });
}

// Each warning with `escalation` set where it raises a kind already raised at a lower severity (the
// detector's "Now critical"), in the order raised.
export function withEscalations(warnings) {
  const last = new Map();
  return [...warnings].sort((a, b) => a.id - b.id).map((w) => {
    const before = last.get(w.kind);
    last.set(w.kind, w);
    return { ...w, escalation: before !== undefined && SEVERITY_RANK[w.severity] > SEVERITY_RANK[before.severity] };
  });
}

const MAX_WARNING_MARKS = 60; // per chart; the cards list them all
const LABEL_ROWS = 3; // labels of nearby warnings are staggered over this many rows

// A vertical line at each warning's step (dashed at an onset, solid and thicker at an escalation) and a
// label at the top of the plot naming its kind; `focused` (a warning id) is drawn bolder. Shapes and
// annotations are named "warning <id>".
export function warningMarks(warnings, xOf, focused = null) {
  const shapes = [];
  const annotations = [];
  const shown = [...warnings].sort((a, b) => a.step - b.step || a.id - b.id).slice(0, MAX_WARNING_MARKS);
  shown.forEach((w, i) => {
    const color = SEVERITY_COLORS[w.severity] ?? COLORS.grey;
    const x = xOf(w.step);
    const bold = w.id === focused;
    shapes.push({
      type: "line", name: `warning ${w.id}`, xref: "x", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, layer: "above",
      line: { color, width: bold ? 4 : w.escalation ? 2.5 : 1.5, dash: w.escalation ? "solid" : "dash" },
    });
    annotations.push({
      name: `warning ${w.id}`, xref: "x", x, xanchor: "left", yref: "paper", y: 1 - 0.08 * (i % LABEL_ROWS), yanchor: "top",
      text: `${w.escalation ? "▲ " : ""}${w.kind}${w.escalation ? ": now " + w.severity : ""}`, showarrow: false,
      font: { size: 11, color }, bgcolor: schemeColors().label, bordercolor: bold ? color : "rgba(0,0,0,0)",
      hovertext: `${w.severity} from step ${w.step}: ${w.message ?? ""}`,
    });
  });
  return { shapes, annotations };
}

// The frame trace: epoch boundaries (faint vertical segments on the hidden 0-1 axis) and, as points
// that draw nothing, the extent of the run's steps, so a validation chart spans the batch charts' x range.
export function frameTrace() {
  return {
    type: "scatter", mode: "lines", name: "epoch boundaries", x: [], y: [], yaxis: "y3", showlegend: false, hoverinfo: "skip",
    line: { color: "#aab3c0", width: 1 },
  };
}

export function frameSegments(boundaries, extent) {
  return {
    x: [...boundaries.flatMap((b) => [b, b, null]), ...extent.flatMap((e) => [e, null])],
    y: [...boundaries.flatMap(() => [0, 1, null]), ...extent.flatMap(() => [0.5, null])],
  };
}

// Shares of a class: white at the uniform share 1/C, blue below it, red above, so 0.125 and 0.3 of 8
// classes look nothing alike. Returns the heatmap's colorscale and colorbar ticks (zmin 0, zmax 1).
export function classShareScale(numClasses) {
  const u = 1 / Math.max(2, numClasses);
  const colorscale = [
    [0, "#2c5d8f"], [u / 2, "#8fb6d9"], [u, "#f7f7f7"], [u + (1 - u) * 0.2, "#f4a582"],
    [u + (1 - u) * 0.5, "#d6604d"], [1, "#67001f"],
  ];
  const ticks = [...new Set([0, u, ...[0.3, 0.5, 1].filter((t) => t > u + 0.05)])];
  const label = (t) => (t === u ? `1/${Math.round(1 / u)} (uniform)` : String(t));
  return { colorscale, tickvals: ticks, ticktext: ticks.map(label) };
}

// Vertical markers for steps whose values were NaN or infinite: one dotted trace of segments, on a
// hidden 0-1 axis so they span the plot's height (cheaper to draw and extend than a shape per step).
export const NONFINITE_AXIS = { overlaying: "y", range: [0, 1], fixedrange: true, visible: false };

export function nonfiniteTrace() {
  return {
    type: "scatter", mode: "lines", name: "non-finite", x: [], y: [], yaxis: "y3", showlegend: false, hoverinfo: "skip",
    line: { color: COLORS.red, width: 1, dash: "dot" },
  };
}

// x and y of the trace's segments at `steps`
export function nonfiniteSegments(steps) {
  return { x: steps.flatMap((s) => [s, s, null]), y: steps.flatMap(() => [0, 1, null]) };
}

// Resolves once the page's deferred plotly.min.js (script#plotly-js) has run: a module may load before it.
export function plotlyLoaded() {
  if (window.Plotly) return Promise.resolve();
  const tag = document.getElementById("plotly-js");
  return new Promise((resolve, reject) => {
    tag.addEventListener("load", resolve, { once: true });
    tag.addEventListener("error", () => reject(new Error("plotly.min.js did not load")), { once: true });
  });
}

export function showError(message) {
  const box = document.getElementById("chart-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = false;
}

// Colour scheme: the chart frame follows the system's light or dark setting (prefers-color-scheme), as
// the page's CSS does. schemeLayout(layout) sets the frame colours of a layout before it is drawn (it
// leaves trace colours alone); onSchemeChange(fn) calls fn(colours) when the system switches, for
// Plotly.relayout(chart, schemeUpdate()) on each drawn chart.
const DARK_QUERY = typeof window.matchMedia === "function" ? window.matchMedia("(prefers-color-scheme: dark)") : null;

const SCHEMES = {
  light: { paper: "#ffffff", plot: "#ffffff", text: "#1d2330", grid: "#e6e9ee", line: "#c5ccd6", label: "rgba(255,255,255,0.8)",
    hover: "#ffffff" },
  dark: { paper: "#161b22", plot: "#161b22", text: "#e3e8ef", grid: "#2b3340", line: "#46505f", label: "rgba(22,27,34,0.85)",
    hover: "#222a35" },
};

export function schemeColors() {
  return DARK_QUERY?.matches ? SCHEMES.dark : SCHEMES.light;
}

// A trace drawn in the text's colour ("total" loss, the objective): near black, or near white in dark mode.
export const INK = "ink";
export const inkOf = (color) => (color === INK ? schemeColors().text : color);

// the frame colours as a Plotly.relayout update ("font.color": ..., "xaxis.gridcolor": ...)
export function schemeUpdate(layout = {}, colors = schemeColors()) {
  const update = {
    paper_bgcolor: colors.paper, plot_bgcolor: colors.plot, "font.color": colors.text,
    "hoverlabel.bgcolor": colors.hover, "hoverlabel.font.color": colors.text, "legend.font.color": colors.text,
    "title.font.color": colors.text,
  };
  for (const axis of Object.keys(layout).filter((k) => /^[xy]axis\d*$/.test(k)).concat(["xaxis", "yaxis"])) {
    update[`${axis}.gridcolor`] = colors.grid;
    update[`${axis}.linecolor`] = colors.line;
    update[`${axis}.zerolinecolor`] = colors.line;
  }
  (layout.annotations ?? []).forEach((a, i) => {
    if (a.bgcolor) update[`annotations[${i}].bgcolor`] = colors.label;
  });
  return update;
}

export function schemeLayout(layout) {
  for (const [path, value] of Object.entries(schemeUpdate(layout))) {
    const keys = path.replace(/\[(\d+)\]/g, ".$1").split(".");
    let node = layout;
    for (const key of keys.slice(0, -1)) node = node[key] ??= {};
    node[keys.at(-1)] = value;
  }
  return layout;
}

export function onSchemeChange(callback) {
  DARK_QUERY?.addEventListener("change", () => callback(schemeColors()));
}
