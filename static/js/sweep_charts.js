// The sweep page's charts, drawn from the trials its live part carries (templates/sweeps/_trials.html):
// the objective of each trial with the best so far, parallel coordinates over the searched fields and the
// objective (a line chart over normalised axes: the pages' Plotly build has no parcoords), and the
// collapse rate over two fields the user picks, numeric fields in bins.

import { COLORS, PLOT_CONFIG, baseLayout, schemeLayout } from "./plot_style.js";

const GOLD = "#c99a06";
// how a trial is drawn, by what came of it (the first that applies)
const KINDS = [
  { key: "pruned", name: "pruned", test: (t) => t.status === "pruned", color: COLORS.orange, symbol: "triangle-down", dash: "dot" },
  { key: "collapsed", name: "collapsed (never wins)", test: (t) => t.collapsed, color: COLORS.red, symbol: "x", dash: "dash" },
  { key: "completed", name: "completed", test: (t) => t.status === "completed", color: COLORS.blue, symbol: "circle", dash: "solid" },
  { key: "running", name: "running (so far)", test: (t) => t.status === "running", color: COLORS.grey, symbol: "circle-open", dash: "dot" },
  { key: "other", name: "failed or cancelled", test: () => true, color: COLORS.brown, symbol: "diamond-open", dash: "dot" },
];
const kindOf = (trial) => KINDS.find((k) => k.test(trial));
const fmt = (value) => (typeof value === "number" ? Number(value.toPrecision(4)).toString() : String(value));
const narrow = (id) => document.getElementById(id).clientWidth < 520;

function layoutFor(id, options) {
  const layout = baseLayout(options);
  layout.hovermode = "closest";
  if (narrow(id)) layout.title.font.size = 13; // a phone: the whole title still fits
  return layout;
}

function draw(id, traces, layout) {
  return Plotly.react(id, traces, schemeLayout(layout), PLOT_CONFIG);
}

function hoverText(data, t) {
  const params = Object.entries(t.params).map(([k, v]) => `${k} = ${fmt(v)}`).join("<br>");
  const why = t.pruned_reason ? `<br>pruned: ${t.pruned_reason}` : "";
  return `trial ${t.number} · run #${t.run_id} · ${t.status}<br>${data.objective} ${t.objective === null ? "—" : fmt(t.objective)}<br>${params}${why}`;
}

// --- objective vs trial --------------------------------------------------------------------------------
function bestSoFar(data) {
  const better = data.direction === "minimize" ? (a, b) => a < b : (a, b) => a > b;
  const x = [];
  const y = [];
  let best = null;
  for (const t of data.trials) {
    if (t.status === "completed" && !t.collapsed && t.objective !== null && (best === null || better(t.objective, best))) {
      best = t.objective;
    }
    if (best !== null) {
      x.push(t.number);
      y.push(best);
    }
  }
  return { x, y };
}

function objectiveChart(data) {
  const id = "chart-objective";
  const scored = data.trials.filter((t) => t.objective !== null);
  const traces = [{ type: "scatter", mode: "lines", name: "best so far", ...bestSoFar(data),
    line: { color: GOLD, width: 2, shape: "hv" }, hoverinfo: "skip" }];
  for (const kind of KINDS) {
    const mine = scored.filter((t) => kindOf(t) === kind);
    if (!mine.length) continue;
    traces.push({ type: "scatter", mode: "markers", name: kind.name, x: mine.map((t) => t.number), y: mine.map((t) => t.objective),
      marker: { color: kind.color, symbol: kind.symbol, size: 10, line: { width: 2, color: kind.color } },
      text: mine.map((t) => hoverText(data, t)), hovertemplate: "%{text}<extra></extra>" });
  }
  const best = data.trials.find((t) => t.run_id === data.best_run_id);
  if (best) {
    traces.push({ type: "scatter", mode: "markers", name: "best trial", x: [best.number], y: [best.objective],
      marker: { color: GOLD, symbol: "star", size: 18, line: { width: 1, color: "#000" } }, hoverinfo: "skip" });
  }
  const small = narrow(id);
  const layout = layoutFor(id, { title: `Objective vs trial: ${data.objective}, ${data.direction}d${small ? "<br>" : " "}(best so far as a line)`,
    xTitle: "trial number", yTitle: small ? data.objective_short : data.objective_label });
  layout.margin.t = small ? 110 : 86;
  layout.xaxis.dtick = data.trials.length <= 20 ? 1 : undefined;
  const missing = data.trials.length - scored.length;
  if (missing) {
    layout.annotations.push({ xref: "paper", yref: "paper", x: 1, y: 0, xanchor: "right", yanchor: "bottom", showarrow: false,
      text: `${missing} trial${missing > 1 ? "s" : ""} without an objective yet (not drawn)`, font: { size: 11, color: COLORS.grey } });
  }
  return draw(id, traces, layout);
}

// --- parallel coordinates: one line per trial over normalised axes ----------------------------------------
function axisOf(name, spec) {
  if (spec.choices) {
    const keys = spec.choices.map((c) => JSON.stringify(c));
    const last = Math.max(keys.length - 1, 1);
    return { name, label: name, low: fmt(spec.choices[0]), high: fmt(spec.choices.at(-1)),
      at: (v) => {
        const i = keys.indexOf(JSON.stringify(v));
        return i < 0 ? null : keys.length === 1 ? 0.5 : i / last;
      } };
  }
  const f = spec.log ? Math.log : (v) => v;
  const span = f(spec.high) - f(spec.low);
  return { name, label: spec.log ? `${name} (log)` : name, low: fmt(spec.low), high: fmt(spec.high),
    at: (v) => (typeof v === "number" ? (f(v) - f(spec.low)) / span : null) };
}

function objectiveAxis(data) {
  const values = data.trials.map((t) => t.objective).filter((v) => v !== null);
  const low = Math.min(...values);
  const high = Math.max(...values);
  return { name: data.objective, label: data.objective, low: values.length ? fmt(low) : "—", high: values.length ? fmt(high) : "—",
    at: (v) => (v === null ? null : high > low ? (v - low) / (high - low) : 0.5) };
}

function parallelChart(data) {
  const id = "chart-parallel";
  const axes = [...Object.entries(data.search_space).map(([name, spec]) => axisOf(name, spec)), objectiveAxis(data)];
  const xs = axes.map((_, i) => i);
  const shown = new Set();
  const traces = data.trials.map((t) => {
    const kind = kindOf(t);
    const isBest = t.run_id === data.best_run_id;
    const group = isBest ? "best" : kind.key;
    const trace = { type: "scatter", mode: "lines+markers", x: xs, name: isBest ? "best trial" : kind.name, legendgroup: group,
      showlegend: !shown.has(group), y: axes.map((a, i) => a.at(i < axes.length - 1 ? t.params[a.name] : t.objective)),
      line: { color: isBest ? GOLD : kind.color, width: isBest ? 4 : 1.5, dash: isBest ? "solid" : kind.dash },
      marker: { size: 5 }, opacity: isBest ? 1 : 0.75, text: hoverText(data, t), hovertemplate: "%{text}<extra></extra>" };
    shown.add(group);
    return trace;
  });
  const small = narrow(id);
  const layout = layoutFor(id, { title: `Parallel coordinates: one line per trial<br><sub>a line chart over normalised axes:${
    small ? "<br>" : " "}0 = each axis's low end, 1 = its high end</sub>`, xTitle: "",
  yTitle: small ? "position (0 = low, 1 = high)" : "position on the axis (0 = low, 1 = high)", yRange: [-0.12, 1.12] });
  layout.margin.t = small ? 120 : 100;
  layout.title.y = 0.95; // two lines: anchored lower, or the first touches the frame
  Object.assign(layout.xaxis, { tickvals: xs, ticktext: axes.map((a) => a.label), range: [-0.3, axes.length - 0.7], showgrid: false });
  axes.forEach((a, i) => {
    layout.shapes.push({ type: "line", x0: i, x1: i, yref: "y", y0: 0, y1: 1, line: { color: COLORS.grey, width: 1 } });
    for (const [y, text, anchor] of [[0, a.low, "top"], [1, a.high, "bottom"]]) {
      layout.annotations.push({ x: i, y, text, showarrow: false, yanchor: anchor, font: { size: 11, color: COLORS.grey } });
    }
  });
  return draw(id, traces, layout);
}

// --- collapse rate over two fields -----------------------------------------------------------------------
const BINS = 5; // a numeric field's bins, unless it takes fewer values than that

// the values as short as they can be written while still told apart (a category axis merges equal labels)
function distinct(values, from = 2) {
  for (let digits = from; digits <= 8; digits += 1) {
    const labels = values.map((v) => (typeof v === "number" ? Number(v.toPrecision(digits)).toString() : String(v)));
    if (new Set(labels).size === labels.length) return labels;
  }
  return values.map((v) => JSON.stringify(v));
}

function binsOf(name, spec) {
  if (!name) return { labels: ["all trials"], index: () => 0, title: "" };
  if (spec.choices) {
    const keys = spec.choices.map((c) => JSON.stringify(c));
    return { labels: distinct(spec.choices, 4), index: (v) => keys.indexOf(JSON.stringify(v)), title: name };
  }
  const step = spec.step ?? (spec.int ? 1 : null);
  const count = step ? Math.floor((spec.high - spec.low) / step + 1e-9) + 1 : Infinity;
  if (count <= BINS + 1) {
    const values = Array.from({ length: count }, (_, i) => spec.low + i * step);
    return { labels: distinct(values, 4), index: (v) => Math.round((v - spec.low) / step), title: name };
  }
  const f = spec.log ? Math.log : (v) => v;
  const g = spec.log ? Math.exp : (v) => v;
  const width = (f(spec.high) - f(spec.low)) / BINS;
  const edges = Array.from({ length: BINS + 1 }, (_, i) => g(f(spec.low) + i * width));
  const ends = distinct(edges);
  return { labels: ends.slice(0, -1).map((e, i) => `${e}–${ends[i + 1]}`),
    index: (v) => Math.min(BINS - 1, Math.max(0, Math.floor((f(v) - f(spec.low)) / width))),
    title: `${name}${spec.log ? " (bins equal on a log scale)" : " (equal bins)"}` };
}

// a trial that trained far enough to judge: it ended with a verdict, or raised a collapse warning
const judged = (t) => t.collapsed || ["completed", "pruned", "diverged"].includes(t.status);

function collapseChart(data, xName, yName) {
  const id = "chart-collapse";
  const xb = binsOf(xName, data.search_space[xName]);
  const yb = binsOf(yName, data.search_space[yName]);
  const counts = yb.labels.map(() => xb.labels.map(() => [0, 0])); // [collapsed, judged] per cell
  for (const t of data.trials.filter(judged)) {
    const i = yb.index(yName ? t.params[yName] : null);
    const j = xb.index(t.params[xName]);
    if (counts[i]?.[j]) {
      counts[i][j][1] += 1;
      if (t.collapsed) counts[i][j][0] += 1;
    }
  }
  const z = counts.map((row) => row.map(([c, n]) => (n ? c / n : null)));
  const text = counts.map((row) => row.map(([c, n]) => (n ? `${c}/${n}` : "")));
  const trace = { type: "heatmap", x: xb.labels, y: yb.labels, z, text, texttemplate: "%{text}", zmin: 0, zmax: 1,
    colorscale: [[0, "#2ca02c"], [0.5, "#ffbf00"], [1, "#d62728"]], xgap: 2, ygap: 2, hoverongaps: false,
    colorbar: { title: { text: "collapse rate<br>(share of trials)", side: "right" }, thickness: 12 },
    hovertemplate: `${xName} %{x}${yName ? `, ${yName} %{y}` : ""}: %{text} collapsed<extra></extra>` };
  const title = `Collapse rate by ${xName}${yName ? ` and ${yName}` : ""}`;
  const layout = layoutFor(id, { title, xTitle: xb.title, yTitle: yb.title || " " });
  layout.margin.t = 60;
  Object.assign(layout.xaxis, { type: "category", showgrid: false });
  Object.assign(layout.yaxis, { type: "category", showgrid: false });
  if (!data.trials.some(judged)) {
    layout.annotations.push({ xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false, text: "no trial has ended yet" });
  }
  return draw(id, [trace], layout);
}

export function drawSweepCharts(data, heat) {
  return Promise.all([objectiveChart(data), parallelChart(data), collapseChart(data, heat.x, heat.y)]);
}

export function drawCollapseChart(data, heat) {
  return collapseChart(data, heat.x, heat.y);
}
