// One x range for all of the run page's step charts: a zoom or pan on one is applied to the others, a
// double-click (autoscale) resets them all, and a chart drawn later starts with the range. Plotly also
// reports the relayouts made here, so a chart already showing the range is left alone (no echo).

const near = (a, b) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));

// the new x range of a plotly_relayout event: [a, b], null (autorange) or undefined (x untouched)
function xRangeOf(event) {
  if (event["xaxis.autorange"]) return null;
  if (Array.isArray(event["xaxis.range"])) return event["xaxis.range"].map(Number);
  if ("xaxis.range[0]" in event && "xaxis.range[1]" in event) return [Number(event["xaxis.range[0]"]), Number(event["xaxis.range[1]"])];
  return undefined;
}

export function createZoomSync() {
  let range = null; // null: every chart autoranges
  const charts = new Map(); // id -> {el, layout}: each chart's current layout object takes the range too

  function shows(el) {
    const xa = el._fullLayout?.xaxis;
    if (!xa) return true; // not drawn yet: it takes the range from its layout when it is
    if (range === null) return xa.autorange === true;
    return xa.autorange !== true && near(xa.range[0], range[0]) && near(xa.range[1], range[1]);
  }

  function spread(fromId) {
    for (const [id, chart] of charts) {
      applyTo(chart.layout);
      if (id === fromId || shows(chart.el)) continue;
      Plotly.relayout(chart.el, range === null ? { "xaxis.autorange": true } : { "xaxis.range": [...range] });
    }
  }

  function applyTo(layout) {
    if (range === null) {
      delete layout.xaxis.range;
      layout.xaxis.autorange = true;
    } else {
      layout.xaxis.range = [...range];
      layout.xaxis.autorange = false;
    }
  }

  return {
    // a chart (by id) whose layout object is `layout`: before it is drawn (it starts with the range) and
    // after (its zooms are followed); again with each new layout object
    track(id, layout) {
      const el = document.getElementById(id);
      const fresh = charts.get(id)?.el !== el || !el.__zoomSynced;
      charts.set(id, { el, layout });
      applyTo(layout);
      if (fresh && el.on) {
        el.__zoomSynced = true;
        el.on("plotly_relayout", (event) => {
          const next = xRangeOf(event);
          if (next === undefined || (next !== null && !next.every(Number.isFinite))) return;
          if (next === null ? range === null : range !== null && near(next[0], range[0]) && near(next[1], range[1])) return;
          range = next;
          spread(id);
        });
      }
    },
    // every chart back to autorange; `now`: relayout them (else they take it when next drawn)
    reset(now = true) {
      range = null;
      if (now) spread(null);
      else for (const chart of charts.values()) applyTo(chart.layout);
    },
    range: () => (range ? [...range] : null),
  };
}
