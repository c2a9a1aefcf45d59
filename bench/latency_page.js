// Injected before the run page's own scripts (page.add_init_script) by bench/latency.py: timestamps,
// on the machine's wall clock (Date.now(), the same clock as Python's time.time()), when each stats
// event arrives over SSE and when each chart extension has been drawn.
(() => {
  const rec = { drawn: [], arrived: [], opened: 0, status: null };
  window.__cwLatency = rec;
  const TRACKED = new Set(["chart-entropy", "chart-grad"]); // the first and the last of the stat charts

  function wrap(plotly) {
    const extend = plotly.extendTraces;
    plotly.extendTraces = function (gd, update, ...rest) {
      const id = typeof gd === "string" ? gd : gd.id;
      const called = Date.now();
      const result = extend.call(this, gd, update, ...rest);
      const steps = update?.x?.[0];
      if (TRACKED.has(id) && steps?.length) {
        const [first, last] = [steps[0], steps[steps.length - 1]];
        // [chart, first step, last step, points, called at, drawn at]; drawn: the animation frame
        // after Plotly finished redrawing the plot (its promise resolved)
        Promise.resolve(result).then(() =>
          requestAnimationFrame(() => rec.drawn.push([id, first, last, steps.length, called, Date.now()])));
      }
      return result;
    };
  }

  let plotly;
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set: (value) => {
      plotly = value;
      if (value?.extendTraces) wrap(value);
    },
  });

  const Source = window.EventSource;
  function TimedSource(url, init) {
    const source = new Source(url, init);
    source.addEventListener("open", () => { rec.opened = Date.now(); });
    source.addEventListener("status", (event) => { rec.status = JSON.parse(event.data).status; });
    // registered before the page's own listener, so this is the arrival, before any rendering
    source.addEventListener("stats", (event) => {
      const first = /"steps":\[(-?\d+)/.exec(event.data);
      const last = /"last_step":(-?\d+)/.exec(event.data);
      if (first && last) rec.arrived.push([Number(first[1]), Number(last[1]), Date.now()]);
    });
    return source;
  }
  TimedSource.prototype = Source.prototype;
  window.EventSource = TimedSource;
})();
