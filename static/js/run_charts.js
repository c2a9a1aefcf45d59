// The run page's charts: drawn once with the first data, then extended with each stats or eval
// increment (when each is drawn and redrawn is chart_scheduler.js's business). Every chart on the step
// axis shares one x range (chart_sync.js) and shows each warning at its step and each epoch boundary;
// each line chart is viewed as its controls say (chart_settings.js). Titles come from the template.

import { chartSettings } from "./chart_settings.js";
import { createZoomSync } from "./chart_sync.js";
import { classHeatmap, confusionMatrix, validationClassShares } from "./class_charts.js";
import { scheduleCharts } from "./chart_scheduler.js";
import { lineChart } from "./line_chart.js";
import { createWallClock } from "./wall_clock.js";
import { EVAL_CHARTS, STAT_CHARTS } from "./chart_specs.js";
import { COLORS, baseLayout, thresholdLine, warningMarks, withEscalations } from "./plot_style.js";

const EVAL_FRAME_MS = 1000; // the validation charts take the run's growing extent at most this often

const seriesObjects = (rows, extra) => rows.map(([column, name, color, dash, yaxis]) => ({ column, name, color, dash, yaxis, ...extra }));

// [{step, column, kind}] of a stats answer or of eval records (their metrics named "validation <metric>")
const statNonfinite = (s) => Object.entries(s?.nonfinite ?? {}).flatMap(([column, entries]) =>
  entries.map(([index, kind]) => ({ step: s.steps[index], column, kind })));
const evalNonfinite = (records) => (records ?? []).flatMap((r) =>
  Object.entries(r.nonfinite ?? {}).map(([metric, kind]) => ({ step: r.step, column: `validation ${metric}`, kind })));

function chartLayout(spec, meta, title) {
  return (settings) => {
    const scaled = settings.scaled && spec.scalable;
    const layout = baseLayout({
      title: scaled ? spec.scaledTitle : title, yTitle: scaled ? spec.scaledYTitle : spec.yTitle, y2Title: spec.y2Title,
      yRange: spec.yRange, y2Range: spec.y2Range,
    });
    for (const [y, label] of spec.thresholds?.(meta, settings) ?? []) thresholdLine(layout, y, label);
    if (spec.fromZero) for (const axis of [layout.yaxis, layout.yaxis2]) if (axis) axis.rangemode = "tozero";
    return layout;
  };
}

// The share of 1s among the last `window` values of a 0/1 column, carried across increments. A downsampled
// history holds each bucket's min and max, so there it is the share of bucket extremes that clipped.
function rollingShare(window) {
  const last = [];
  let sum = 0;
  return (values) => values.map((v) => {
    if (v == null) return null;
    last.push(v >= 0.5 ? 1 : 0);
    sum += last.at(-1);
    if (last.length > window) sum -= last.shift();
    return sum / last.length;
  });
}

function statChart(spec, meta, first, ctx) {
  const series = seriesObjects(spec.series(meta), { scalable: spec.scalable });
  if (spec.clipRate) {
    const downsampled = first.some((f) => f.stats?.downsampled);
    // (right axis: its title says what it is; a longer name would not fit a phone's legend)
    const name = downsampled ? `clipped, share of ${spec.clipRate} bucket extremes` : `share clipped, last ${spec.clipRate} batches`;
    series.push({ column: "clipped", name, color: COLORS.orange, dash: "dot", yaxis: "y2", smooth: false, derive: rollingShare(spec.clipRate) });
  }
  if (spec.clipped) series.push({ column: "clipped", name: "clipped", color: COLORS.red, markers: true });
  const seriesOf = ({ stats }) => {
    if (!stats) return null;
    const ys = series.map((s) => {
      const column = stats.columns[s.column] ?? stats.steps.map(() => null);
      return s.derive ? s.derive(column) : column;
    });
    const xs = series.map(() => stats.steps);
    if (spec.clipped) { // the clipped steps' grad norms
      const hits = stats.steps.map((_, i) => i).filter((i) => ys.at(-1)[i] >= 0.5);
      xs[xs.length - 1] = hits.map((i) => stats.steps[i]);
      ys[ys.length - 1] = hits.map((i) => ys[0][i]);
    }
    return { xs, ys };
  };
  return lineChart({
    id: spec.id, series, makeLayout: chartLayout(spec, meta, titleOf(spec.id)), seriesOf, first, ctx,
    nonfiniteOf: (inc) => statNonfinite(inc.stats), columns: new Set(series.map((s) => s.column)),
  });
}

function evalChart(spec, meta, first, ctx) {
  const series = seriesObjects(spec.series(meta), { mode: "lines+markers" });
  const seriesOf = ({ evals }) => evals && {
    xs: series.map(() => evals.map((r) => r.step)),
    ys: series.map((s) => evals.map((r) => r.metrics[s.column] ?? null)),
  };
  return lineChart({
    id: spec.id, series, makeLayout: chartLayout(spec, meta, titleOf(spec.id)), seriesOf, first, ctx,
    nonfiniteOf: (inc) => evalNonfinite(inc.evals), columns: new Set(series.map((s) => `validation ${s.column}`)),
  });
}

const titleOf = (id) => document.getElementById(id)?.dataset.title ?? "";

// The notice above the charts: which measures were NaN or infinite, from which step, how often.
function nonfiniteNotice() {
  const byColumn = new Map();
  return (fresh) => {
    if (!fresh.length) return;
    for (const n of fresh) {
      const entry = byColumn.get(n.column) ?? { first: n.step, count: 0, kinds: new Set() };
      entry.first = Math.min(entry.first, n.step);
      entry.count += 1;
      entry.kinds.add(n.kind);
      byColumn.set(n.column, entry);
    }
    const parts = [...byColumn].map(([column, e]) =>
      `${column}: ${[...e.kinds].join("/")} in ${e.count} batch${e.count === 1 ? "" : "es"} from step ${e.first}`);
    const box = document.getElementById("nonfinite");
    const more = parts.length > 6 ? `; and ${parts.length - 6} more measures` : "";
    box.textContent = `Non-finite values (red dotted lines on the charts). ${parts.slice(0, 6).join("; ")}${more}.`;
    box.hidden = false;
  };
}

const MAX_EPOCH_LINES = 40; // per chart: each line is a segment of the frame trace, and Plotly's cost grows with them

// The steps where an epoch starts (every `every`-th epoch) and the run's extent, per stats answer; it
// learns the steps per epoch from the first boundary when the run did not say. `every` is set by the
// larger of the configured epochs and those the first answer holds (a run's config may not say how many
// it trains: 1,000 epochs drawn as 1,000 lines made each chart ~3x slower to draw).
function epochFrames(meta, onStepsPerEpoch) {
  let every = null;
  let last = null;
  return (s) => {
    every ??= Math.max(1, Math.ceil(Math.max(meta.epochs ?? 1, (s.epochs?.at(-1) ?? 0) + 1) / MAX_EPOCH_LINES));
    const boundaries = [];
    s.steps.forEach((step, i) => {
      const epoch = s.epochs?.[i];
      if (epoch == null) return;
      if (last !== null && epoch > last) {
        if (epoch % every === 0) boundaries.push(step);
        if (epoch > 0) onStepsPerEpoch(step / epoch);
      }
      last = Math.max(last ?? epoch, epoch);
    });
    return { boundaries, extent: s.steps.length ? [s.steps[0], s.steps.at(-1)] : [] };
  };
}

// What outlives a redraw from the history (run_page.js makes it once): the shared zoom, the warnings
// marked, the x axis ("step", "epoch" or "time": wall time, static/js/wall_clock.js).
export function createChartView(xMode = "step") {
  return { zoom: createZoomSync(), warnings: new Map(), focused: null, x: xMode, stepsPerEpoch: null };
}

// Builds the charts with the first data in them (`first`: {stats, evals}, either may be missing), so
// each is drawn once; `drawn` resolves when all of them are. Later increments extend them.
const X_TITLES = {
  step: "step (batch)", epoch: "epoch", time: "wall time (s since the first batch, from its throughput)",
  early: "step (batch); epochs once the first one ends",
};

export function createRunCharts(meta, first = {}, view = createChartView()) {
  view.stepsPerEpoch ??= meta.steps_per_epoch ?? null;
  const clock = createWallClock(meta.batch_size);
  const mode = () => (view.x === "time" && !clock.available() ? "step" : view.x);
  const perEpoch = () => (mode() === "epoch" ? view.stepsPerEpoch : null);
  const controlled = (id) => new Set([...document.querySelectorAll(`.chart-tools[data-chart="${id}"] [data-setting]`)].map((i) => i.dataset.setting));
  const ctx = {
    temperature: meta.temperature,
    sync: view.zoom,
    // only the settings a chart has controls for (templates/runs/detail.html)
    settingsOf: (id) => {
      const has = controlled(id);
      const s = chartSettings(id);
      return { log: has.has("log") && s.log, ema: has.has("ema") ? s.ema : 0, outliers: has.has("outliers") && s.outliers, scaled: has.has("scaled") && s.scaled };
    },
    xOf: (step) => (mode() === "time" ? clock.at(step) : perEpoch() ? step / perEpoch() : step),
    xTitle: () => X_TITLES[mode() !== "epoch" ? mode() : perEpoch() ? "epoch" : "early"],
    marks: () => warningMarks(withEscalations([...view.warnings.values()]), ctx.xOf, view.focused),
  };
  const seenEvalSteps = new Set();
  const freshEvals = (records) => {
    const fresh = records.filter((r) => !seenEvalSteps.has(r.step)).sort((a, b) => a.step - b.step);
    fresh.forEach((r) => seenEvalSteps.add(r.step));
    return fresh;
  };
  let charts = [];
  const frameOf = epochFrames(meta, (spe) => {
    if (view.stepsPerEpoch) return;
    view.stepsPerEpoch = spe;
    if (view.x === "epoch") charts.forEach((c) => c.redraw()); // the x values change once
  });
  if (first.stats) clock.add(first.stats);
  const firstStats = first.stats?.steps.length ? [{ stats: first.stats, frame: frameOf(first.stats) }] : [];
  const firstEvals = freshEvals(first.evals ?? []);
  const firstFrames = firstStats.map(({ frame }) => ({ frame }));
  const notice = nonfiniteNotice();
  notice([...firstStats.flatMap((f) => statNonfinite(f.stats)), ...evalNonfinite(firstEvals)]);

  const stat = STAT_CHARTS.map((spec) => statChart(spec, meta, firstStats, ctx));
  const evalFirst = [...firstFrames, ...(firstEvals.length ? [{ evals: firstEvals }] : [])];
  const evals = EVAL_CHARTS.map((spec) => evalChart(spec, meta, evalFirst, ctx));
  const heat = classHeatmap({ id: "chart-classes", title: titleOf("chart-classes"), numClasses: meta.num_classes, first: firstStats, ctx });
  const passes = [validationClassShares, confusionMatrix].map((make, i) => {
    const id = ["chart-val-classes", "chart-confusion"][i];
    return make({ id, title: titleOf(id), numClasses: meta.num_classes, first: evalFirst });
  });
  // in page order (templates/runs/detail.html)
  const order = [...document.querySelectorAll("#charts .chart")].map((el) => el.id);
  charts = [...stat, heat, ...evals, ...passes].filter((c) => order.includes(c.id)).sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
  const scheduler = scheduleCharts(charts);
  const byId = new Map(charts.map((c) => [c.id, c]));

  // an extendTraces redraws its chart: the validation charts get each epoch boundary at once, the run's
  // extent only now and then, not with every increment
  let evalFrameAt = -Infinity;
  function addStats(s) {
    if (!s.steps.length) return;
    clock.add(s); // before any chart maps these steps to seconds
    const frame = frameOf(s);
    for (const chart of [...stat, heat]) scheduler.push(chart.id, { stats: s, frame });
    if (frame.boundaries.length || performance.now() - evalFrameAt > EVAL_FRAME_MS) {
      evalFrameAt = performance.now();
      for (const chart of evals) scheduler.push(chart.id, { frame });
    }
    notice(statNonfinite(s));
  }

  function addEvals(records) {
    const fresh = freshEvals(records);
    if (!fresh.length) return;
    for (const chart of [...evals, ...passes]) scheduler.push(chart.id, { evals: fresh });
    notice(evalNonfinite(fresh));
  }

  const remark = () => {
    const marks = ctx.marks();
    charts.forEach((c) => c.setMarks(marks));
  };

  // warnings ({id, kind, severity, step, message}): marked on every chart on the step axis
  function addWarnings(list) {
    const fresh = list.filter((w) => !view.warnings.has(w.id));
    if (!fresh.length) return;
    fresh.forEach((w) => view.warnings.set(w.id, w));
    remark();
  }

  function focusWarning(id) {
    view.focused = id;
    remark();
  }

  let due = new Set(); // charts whose settings changed, drawn afresh at the next frame
  function setSettings(id, settings) {
    const chart = byId.get(id);
    if (!chart) return;
    chart.pendingSettings = settings;
    if (!due.size) requestAnimationFrame(() => {
      const now = due;
      due = new Set(); // first: a chart that throws must not hold back every later change
      for (const c of now) {
        try {
          c.setSettings(c.pendingSettings);
        } catch (err) {
          queueMicrotask(() => { throw err; }); // reported as the page's error, the other charts still change
        }
      }
    });
    due.add(chart);
  }

  function setXMode(mode) {
    view.x = mode;
    view.zoom.reset(false); // a range in steps means nothing in epochs
    charts.forEach((c) => c.redraw());
  }

  // drawn afresh, e.g. in the other colour scheme (one not drawn yet takes it when it is)
  const redraw = () => charts.forEach((c) => c.redraw());

  return {
    addStats, addEvals, addWarnings, focusWarning, setSettings, setXMode, redraw, drawn: scheduler.drawn, stop: scheduler.stop,
  };
}
