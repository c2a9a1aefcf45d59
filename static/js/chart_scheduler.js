// When the run page's charts are drawn. A chart on screen is drawn at once; one below the fold when it
// comes near the viewport, or else in the browser's idle time, so the first screen is ready sooner.
// Live increments are applied at most once per animation frame and only to charts on screen (one
// below the fold keeps them and catches up when scrolled to), so a busy tab falls one frame behind
// instead of queueing redraw after redraw.

const NEAR = "300px 0px"; // a chart this close to the viewport counts as on screen
const FRAME_BUDGET_MS = 40; // a frame stops redrawing after this; the other charts go at the next one
const IDLE_TIMEOUT_MS = 1000; // a chart below the fold is drawn within this even if the tab is never idle

// in the viewport itself: drawn before the first frame (those just below it come right after)
const inViewport = (el) => {
  const r = el.getBoundingClientRect();
  return r.bottom > 0 && r.top < window.innerHeight && r.width > 0;
};

// charts: [{id, draw(increments) -> Promise, extend(increments), minIntervalMs?}] in page order. draw
// is called once, with the increments that arrived before it; extend with those that arrived since.
export function scheduleCharts(charts) {
  const items = charts.map((chart) => ({
    ...chart, el: document.getElementById(chart.id), pending: [], drawn: null, visible: false, lastDraw: -Infinity,
  }));
  let frame = 0;
  let timer = 0;
  let stopped = false;
  let allDrawn;
  const drawn = new Promise((resolve) => { allDrawn = resolve; });

  function draw(item) {
    item.drawn = Promise.resolve(item.draw(item.pending.splice(0)));
    item.lastDraw = performance.now();
    if (items.every((i) => i.drawn)) allDrawn(Promise.all(items.map((i) => i.drawn)));
  }

  function flush() {
    frame = 0;
    const start = performance.now();
    let wait = Infinity; // ms until a rate-limited chart may redraw
    // the least recently drawn first, so no chart waits behind the others frame after frame
    const due = items.filter((i) => i.visible && (i.pending.length || !i.drawn)).sort((a, b) => a.lastDraw - b.lastDraw);
    for (const item of due) {
      if (performance.now() - start > FRAME_BUDGET_MS) return schedule();
      const early = item.lastDraw + (item.minIntervalMs ?? 0) - performance.now();
      if (!item.drawn) draw(item);
      else if (early > 0) wait = Math.min(wait, early);
      else {
        item.extend(item.pending.splice(0));
        item.lastDraw = performance.now();
      }
    }
    if (wait < Infinity && !timer) timer = setTimeout(() => { timer = 0; schedule(); }, wait);
  }

  function schedule() {
    if (!frame && !stopped) frame = requestAnimationFrame(flush);
  }

  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const item = items.find((i) => i.el === entry.target);
      item.visible = entry.isIntersecting;
    }
    schedule();
  }, { rootMargin: NEAR });

  function drawWhenIdle() {
    const next = items.find((i) => !i.drawn);
    if (!next || stopped) return;
    requestIdleCallback(() => {
      if (!next.drawn && !stopped) draw(next);
      drawWhenIdle();
    }, { timeout: IDLE_TIMEOUT_MS });
  }

  // the first screen now, in this task; the rest when near the viewport (the observer's first report,
  // after this frame) or idle
  // (all measured before any is drawn: a measure after a draw would force a layout of the page each time)
  const onScreen = items.filter((item) => inViewport(item.el));
  onScreen.forEach(draw);
  items.forEach((item) => observer.observe(item.el));
  drawWhenIdle();

  return {
    // an increment for one chart (by id), applied when it is next redrawn
    push(id, increment) {
      items.find((i) => i.id === id).pending.push(increment);
      schedule();
    },
    drawn, // resolves when every chart has been drawn once
    // no more drawing (the charts are about to be drawn afresh)
    stop() {
      stopped = true;
      observer.disconnect();
      cancelAnimationFrame(frame);
      clearTimeout(timer);
      items.forEach((i) => { i.visible = false; });
    },
  };
}
