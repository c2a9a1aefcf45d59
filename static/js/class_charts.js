// The run page's per-class charts: the predicted-class histogram over time (a heatmap on the step axis,
// redrawn whole, so rate-limited) and, of one validation pass (the latest, or one picked), predicted vs
// target class shares and the confusion matrix.

import {
  COLORS, NONFINITE_AXIS, PLOT_CONFIG, baseLayout, classShareScale, frameSegments, frameTrace, schemeLayout,
} from "./plot_style.js";

const HEATMAP_INTERVAL_MS = 500; // at most twice a second

// ctx: as line_chart.js's (xOf, xTitle, marks, sync)
export function classHeatmap({ id, title, numClasses, first, ctx }) {
  const steps = [];
  const z = [...Array(numClasses)].map(() => []);
  const boundaries = [];
  let pendingFirst = first;
  let layout = null;
  let drawn = false;
  let revision = 0;

  function ingest(increments) {
    for (const inc of increments) {
      if (inc.frame) boundaries.push(...inc.frame.boundaries);
      if (!inc.stats) continue;
      steps.push(...inc.stats.steps);
      for (const row of inc.stats.class_hist ?? []) row.forEach((share, c) => z[c]?.push(share));
    }
  }

  function buildLayout() {
    const l = baseLayout({ title, xTitle: ctx.xTitle(), yTitle: "predicted class" });
    Object.assign(l.yaxis, { dtick: numClasses <= 20 ? 1 : undefined, autorange: true });
    l.yaxis3 = NONFINITE_AXIS;
    l.hovermode = "closest";
    l.margin.t = 50;
    const marks = ctx.marks();
    l.shapes = marks.shapes;
    l.annotations = marks.annotations;
    return schemeLayout(l);
  }

  function render() {
    layout ??= buildLayout();
    const scale = classShareScale(numClasses);
    const heat = {
      type: "heatmap", x: steps.map(ctx.xOf), y: [...Array(numClasses).keys()], z, zmin: 0, zmax: 1,
      colorscale: scale.colorscale,
      colorbar: { title: { text: "share of batch", side: "right" }, thickness: 14, tickvals: scale.tickvals, ticktext: scale.ticktext },
      hovertemplate: `${ctx.xTitle()} %{x}<br>class %{y}: %{z:.3f}<extra></extra>`,
    };
    const edges = frameSegments(boundaries.map(ctx.xOf), []);
    const frame = { ...frameTrace(), ...edges, line: { color: "rgba(40,40,40,0.45)", width: 1 } };
    layout.datarevision = ++revision; // the arrays grow in place, so tell react they changed
    ctx.sync.track(id, layout);
    drawn = true;
    return Promise.resolve(Plotly.react(id, [heat, frame], layout, PLOT_CONFIG)).then(() => ctx.sync.track(id, layout));
  }

  return {
    id,
    minIntervalMs: HEATMAP_INTERVAL_MS,
    draw(increments) {
      ingest([...pendingFirst, ...increments]);
      pendingFirst = [];
      return render();
    },
    extend(increments) {
      ingest(increments);
      render();
    },
    redraw() {
      if (!drawn) return;
      layout = null; // the x axis's title (and the marks) may have changed
      render();
    },
    setSettings() {},
    setMarks(marks) {
      if (!layout) return;
      layout.shapes = marks.shapes;
      layout.annotations = marks.annotations;
      if (drawn) Plotly.relayout(id, { shapes: layout.shapes, annotations: layout.annotations });
    },
  };
}

const passName = (r) => `pass at step ${r.step}, epoch ${r.epoch}`;

// A chart of one validation pass, drawn afresh when the pass shown changes: the latest by default (it
// follows each new one), or the one picked in the chart's pass select (templates/runs/detail.html).
function onePassChart(id, first, build) {
  const passes = new Map(); // step -> record
  let chosen = null; // a step, or null: the latest
  const picker = document.querySelector(`.chart-tools[data-chart="${id}"] select[data-pass]`);
  const latest = () => (passes.size ? passes.get(Math.max(...passes.keys())) : null);
  const shown = () => (chosen !== null && passes.has(chosen) ? passes.get(chosen) : latest());
  const take = (increments) => {
    const fresh = [];
    for (const inc of increments) for (const r of inc.evals ?? []) if (!passes.has(r.step)) fresh.push(r);
    for (const r of fresh.sort((a, b) => a.step - b.step)) {
      passes.set(r.step, r);
      picker?.append(new Option(`step ${r.step} (epoch ${r.epoch})`, String(r.step)));
    }
    if (picker && fresh.length) picker.options[0].textContent = `latest (step ${latest().step})`;
    return fresh.length > 0;
  };
  const render = () => {
    const { traces, layout } = build(shown());
    return Plotly.react(id, traces, schemeLayout(layout), PLOT_CONFIG);
  };
  picker?.addEventListener("change", () => {
    chosen = picker.value === "latest" ? null : Number(picker.value);
    if (passes.size) render();
  });
  return {
    id,
    draw(increments) {
      take([...first, ...increments]);
      return render();
    },
    extend(increments) {
      if (take(increments) && chosen === null) render(); // a picked pass stays until the user picks again
    },
    redraw() {
      if (passes.size) render();
    },
    setSettings() {},
    setMarks() {},
  };
}

export function validationClassShares({ id, title, numClasses, first }) {
  const classes = [...Array(numClasses).keys()];
  return onePassChart(id, first, (r) => {
    const layout = baseLayout({ title: r ? `${title} (${passName(r)})` : title, xTitle: "class", yTitle: "share of validation set" });
    Object.assign(layout.xaxis, { dtick: 1, type: "category" });
    layout.barmode = "group";
    layout.hovermode = "x unified";
    layout.margin.t = 72;
    const bar = (name, values, color) => ({ type: "bar", name, x: classes, y: values ?? [], marker: { color }, hovertemplate: "%{y:.3f}" });
    return { layout, traces: [bar("predicted (argmax)", r?.pred_hist, COLORS.blue), bar("targets (argmax)", r?.target_hist, COLORS.grey)] };
  });
}

export function confusionMatrix({ id, title, numClasses, first }) {
  const classes = [...Array(numClasses).keys()];
  return onePassChart(id, first, (r) => {
    const counts = r?.confusion ?? [];
    // each target class's row as shares, so a rare class's row reads like a common one's
    const shares = counts.map((row) => {
      const total = row.reduce((a, b) => a + b, 0);
      return row.map((n) => (total ? n / total : null));
    });
    const layout = baseLayout({ title: r ? `${title} (${passName(r)})` : title, xTitle: "predicted class", yTitle: "target class (argmax)" });
    Object.assign(layout.xaxis, { dtick: 1, side: "bottom" });
    Object.assign(layout.yaxis, { dtick: 1, autorange: "reversed" });
    layout.hovermode = "closest";
    layout.margin.t = 50;
    const heat = {
      type: "heatmap", x: classes, y: classes, z: shares, zmin: 0, zmax: 1, customdata: counts,
      colorscale: [[0, "#f7fbff"], [0.1, "#deebf7"], [0.3, "#9ecae1"], [0.6, "#4292c6"], [1, "#08306b"]],
      texttemplate: numClasses <= 12 ? "%{z:.2f}" : "", textfont: { size: 11 },
      colorbar: { title: { text: "share of the row (target class)", side: "right" }, thickness: 14 },
      hovertemplate: "target %{y} → predicted %{x}: %{customdata} samples (%{z:.2f} of the row)<extra></extra>",
    };
    return { layout, traces: [heat] };
  });
}
