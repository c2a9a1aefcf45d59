// Injected before the run page's own scripts (page.add_init_script) by bench/latency.py: timestamps,
// on the machine's wall clock (Date.now(), the same clock as Python's time.time()), when each stats
// event arrives over SSE and when each chart has drawn new steps.
(() => {
  const rec = { drawn: [], arrived: [], opened: 0, status: null };
  window.__cwLatency = rec;

  // [chart, first step, last step, points, called at, drawn at] for each call that put steps on a
  // chart; drawn: the animation frame after Plotly finished redrawing the plot (its promise resolved)
  function note(id, steps, called, result) {
    if (!steps?.length) return;
    const [first, last] = [steps[0], steps[steps.length - 1]];
    Promise.resolve(result).then(() =>
      requestAnimationFrame(() => rec.drawn.push([id, first, last, steps.length, called, Date.now()])));
  }

  function wrap(plotly) {
    const { extendTraces, newPlot, react } = plotly;
    plotly.extendTraces = function (gd, update, ...rest) {
      const called = Date.now();
      const result = extendTraces.call(this, gd, update, ...rest);
      note(typeof gd === "string" ? gd : gd.id, update?.x?.[0], called, result);
      return result;
    };
    // a chart drawn whole: for the first time (one below the fold, with the increments it kept), or
    // afresh from the history
    for (const [name, draw] of [["newPlot", newPlot], ["react", react]]) {
      plotly[name] = function (gd, data, ...rest) {
        const called = Date.now();
        const result = draw.call(this, gd, data, ...rest);
        note(typeof gd === "string" ? gd : gd.id, data?.[0]?.x, called, result);
        return result;
      };
    }
  }

  let plotly;
  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set: (value) => {
      plotly = value;
      if (value?.extendTraces && value?.newPlot && value?.react) wrap(value);
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
