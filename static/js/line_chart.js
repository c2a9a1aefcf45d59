// A run-page line chart fed by increments ({stats}, {evals} or {frame}). It keeps what it was given
// (per series, steps and raw values), so a change of view (log axis, smoothing, outlier range,
// logits / T, the x axis) draws it afresh from them, while a live increment only extends what is drawn
// (Plotly.extendTraces). Warning marks come and go with Plotly.relayout.

import {
  NONFINITE_AXIS, PLOT_CONFIG, frameSegments, frameTrace, inkOf, lineTrace, markerTrace, nonfiniteSegments, nonfiniteTrace,
  reserveLegend, schemeLayout,
} from "./plot_style.js";

const MAX_NONFINITE_MARKERS = 200; // per chart: more would hide the data
const FAINT = 0.3; // opacity of the raw lines while a smoothed line is drawn over them
const OUTLIER_QUANTILES = [0.01, 0.99]; // "ignore outliers": the y range holds the values between these
const RANGE_REFRESH_MS = 1000; // ... recomputed live at most this often

const append = (target, values) => {
  for (const v of values) target.push(v);
};

// the values between the quantiles, padded; in log10 units on a log axis; null with too few values
function robustRange(values, log) {
  const kept = [];
  for (const v of values) if (v != null && Number.isFinite(v) && (!log || v > 0)) kept.push(log ? Math.log10(v) : v);
  if (kept.length < 5) return null;
  kept.sort((a, b) => a - b);
  const at = (q) => kept[Math.min(kept.length - 1, Math.max(0, Math.round(q * (kept.length - 1))))];
  const [lo, hi] = OUTLIER_QUANTILES.map(at);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 0.5;
  return [lo - pad, hi + pad];
}

// debiased exponential moving average (TensorBoard's smoothing) of `values`, continuing `state`
function smoothed(values, state, weight) {
  return values.map((v) => {
    if (v == null || !Number.isFinite(v)) return null;
    state.acc = weight * state.acc + (1 - weight) * v;
    state.n += 1;
    return state.acc / (1 - weight ** state.n);
  });
}

// series: [{name, color, dash, yaxis, mode, markers, smooth, scalable}]; makeLayout(settings) the layout
// with titles and threshold lines; seriesOf(increment) {xs, ys} per series or null; nonfiniteOf(increment)
// [{step, column}]; ctx: {settingsOf(id), xOf(step), xTitle(), marks(), temperature, sync}
export function lineChart({ id, series, makeLayout, seriesOf, nonfiniteOf, columns, first, ctx }) {
  const el = document.getElementById(id);
  const store = series.map(() => ({ x: [], y: [] })); // steps and raw values, as received
  const bad = new Set(); // steps marked non-finite
  const frame = { boundaries: [], lo: Infinity, hi: -Infinity };
  let pendingFirst = first;
  let settings = ctx.settingsOf(id);
  let layout = null;
  let base = { shapes: [], annotations: [] }; // the layout's own marks (thresholds), warnings go after them
  let ema = [];
  let drawn = false;
  let rangeAt = 0;

  const smooths = (i) => settings.ema > 0 && series[i].smooth !== false && !series[i].markers;
  const scale = (i) => (settings.scaled && series[i].scalable ? 1 / ctx.temperature : 1);

  function ingest(increments) {
    const fresh = { pts: series.map(() => ({ x: [], y: [] })), bad: [], boundaries: [], extent: [] };
    for (const inc of increments) {
      const got = seriesOf(inc);
      got?.xs.forEach((xs, i) => { append(fresh.pts[i].x, xs); append(fresh.pts[i].y, got.ys[i]); });
      for (const n of nonfiniteOf(inc)) {
        if (!columns.has(n.column) || bad.has(n.step) || bad.size >= MAX_NONFINITE_MARKERS) continue;
        bad.add(n.step);
        fresh.bad.push(n.step);
      }
      if (inc.frame) {
        append(fresh.boundaries, inc.frame.boundaries);
        append(fresh.extent, inc.frame.extent);
      }
    }
    fresh.pts.forEach((p, i) => { append(store[i].x, p.x); append(store[i].y, p.y); });
    append(frame.boundaries, fresh.boundaries);
    for (const e of fresh.extent) [frame.lo, frame.hi] = [Math.min(frame.lo, e), Math.max(frame.hi, e)];
    return fresh;
  }

  // per trace (raw series, smoothed series, non-finite marks, frame) the x and y values of `src`
  function values(src) {
    const xs = [];
    const ys = [];
    src.pts.forEach((p, i) => {
      const k = scale(i);
      xs.push(p.x.map(ctx.xOf));
      ys.push(k === 1 ? p.y.slice() : p.y.map((v) => (v == null ? null : v * k)));
    });
    src.pts.forEach((_, i) => {
      if (!smooths(i)) return;
      xs.push(xs[i].slice());
      ys.push(smoothed(ys[i], ema[i], settings.ema));
    });
    const marks = nonfiniteSegments(src.bad.map(ctx.xOf));
    const edges = frameSegments(src.boundaries.map(ctx.xOf), src.extent.map(ctx.xOf));
    return { xs: [...xs, marks.x, edges.x], ys: [...ys, marks.y, edges.y] };
  }

  // a smoothed series shows in the legend by its smoothed line; a click there hides both (one legend group)
  function traces() {
    const raw = series.map((s, i) => (s.markers ? markerTrace(s.name, inkOf(s.color)) : {
      ...lineTrace(s.name, inkOf(s.color), { dash: s.dash, yaxis: s.yaxis, legendgroup: s.name, width: smooths(i) ? 1.2 : 2 }),
      mode: s.mode ?? "lines", opacity: smooths(i) ? FAINT : 1, showlegend: !smooths(i),
    }));
    const smooth = series.flatMap((s, i) => (smooths(i)
      ? [{ ...lineTrace(s.name, inkOf(s.color), { dash: s.dash, yaxis: s.yaxis, legendgroup: s.name }), hovertemplate: "%{y:.4g} (smoothed)" }]
      : []));
    return [...raw, ...smooth, nonfiniteTrace(), frameTrace()];
  }

  function outlierRange() {
    const ys = store.flatMap((p, i) => ((series[i].yaxis ?? "y") === "y" ? p.y.map((v) => (v == null ? v : v * scale(i))) : []));
    return robustRange(ys, settings.log);
  }

  function buildLayout() {
    const l = makeLayout(settings);
    l.xaxis.title.text = ctx.xTitle();
    l.yaxis3 = NONFINITE_AXIS;
    if (settings.log) l.yaxis.type = "log";
    // a change of the y axis's scale starts it afresh; the x zoom is kept (and shared: chart_sync.js)
    l.yaxis.uirevision = `${settings.log} ${settings.scaled} ${settings.outliers}`;
    const range = settings.outliers ? outlierRange() : null;
    if (range) Object.assign(l.yaxis, { range, autorange: false });
    reserveLegend(l, series.map((s) => s.name), el.clientWidth);
    base = { shapes: l.shapes, annotations: l.annotations };
    const marks = ctx.marks();
    l.shapes = [...base.shapes, ...marks.shapes];
    l.annotations = [...base.annotations, ...marks.annotations];
    return schemeLayout(l); // the frame in the system's light or dark colours
  }

  function render() {
    layout = buildLayout();
    ema = series.map(() => ({ acc: 0, n: 0 }));
    const data = traces();
    const { xs, ys } = values({
      pts: store, bad: [...bad], boundaries: frame.boundaries, extent: frame.lo <= frame.hi ? [frame.lo, frame.hi] : [],
    });
    data.forEach((trace, i) => Object.assign(trace, { x: xs[i], y: ys[i] }));
    ctx.sync.track(id, layout);
    drawn = true;
    rangeAt = performance.now();
    // a new plot, or one drawn afresh keeping the user's zoom
    return Promise.resolve(Plotly.react(id, data, layout, PLOT_CONFIG)).then(() => ctx.sync.track(id, layout));
  }

  return {
    id,
    draw(increments) {
      ingest([...pendingFirst, ...increments]);
      pendingFirst = [];
      return render();
    },
    extend(increments) {
      const { xs, ys } = values(ingest(increments));
      Plotly.extendTraces(id, { x: xs, y: ys }, xs.map((_, i) => i));
      if (settings.outliers && performance.now() - rangeAt > RANGE_REFRESH_MS) {
        rangeAt = performance.now();
        const range = outlierRange();
        if (range) Plotly.relayout(id, { "yaxis.range": range });
      }
    },
    // drawn afresh (a new view); one not drawn yet takes it when it is
    redraw() {
      if (drawn) render();
    },
    setSettings(next) {
      settings = next;
      this.redraw();
    },
    setMarks(marks) {
      if (!layout) return;
      layout.shapes = [...base.shapes, ...marks.shapes];
      layout.annotations = [...base.annotations, ...marks.annotations];
      if (drawn) Plotly.relayout(id, { shapes: layout.shapes, annotations: layout.annotations });
    },
  };
}
