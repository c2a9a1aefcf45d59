// Shared look of every chart: fonts, palette, legend placement, axis titles with units.

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

const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 13, color: "#1d2330" };

// No "Share chart..." (Plotly 4 shows it by default): it would upload the run's data to a third party.
export const PLOT_CONFIG = {
  responsive: true,
  displaylogo: false,
  showSendToCloud: false,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d", "sendChartToCloud"],
};

// Legend sits between the title and the plot area, so it never covers data.
export function baseLayout({ title, xTitle = "step (batch)", yTitle, y2Title = null, yRange = null }) {
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
    layout.yaxis2 = { title: { text: y2Title }, overlaying: "y", side: "right", zeroline: false, automargin: true, range: [0, 1.02],
      tickmode: "auto", showgrid: false, ticklabeloverflow: "allow" };
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

// A labelled horizontal threshold line across the whole x range.
export function thresholdLine(layout, y, label, color = COLORS.red) {
  layout.shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y, y1: y, line: { color, width: 1.5, dash: "dash" } });
  layout.annotations.push({
    xref: "paper", x: 1, xanchor: "right", yref: "y", y, yanchor: "bottom", text: label, showarrow: false,
    font: { size: 12, color }, bgcolor: "rgba(255,255,255,0.8)",
  });
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

export function showError(message) {
  const box = document.getElementById("chart-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = false;
}
