"""Time until a run page is interactive in a real Chromium, read from the DOM every animation frame, so
it needs nothing from the page's JS: navigation start until the charts on the first screen show their
first data (a frame was rendered, so the page was free to respond), and until all of them do (without
scrolling: the page draws the others when idle); and the longest main-thread task in between.
"""

from __future__ import annotations

import statistics

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
VISITS = ("first visit", "second visit", "third visit")

# Does a chart show data? A data line is a `.scatterlayer path.js-line` with a real path (legend
# swatches live elsewhere); a heatmap draws an <image> once it has data, a bar chart its bars.
HAS_DATA = """(el) => (el.querySelector(".hm image")?.getAttribute("href") || "").length > 0
  || [...el.querySelectorAll(".scatterlayer path.js-line")].some((p) => (p.getAttribute("d") || "").length > 20)
  || el.querySelectorAll(".barlayer .point path").length > 0"""
CHARTS = "[...document.querySelectorAll('.chart-grid .chart')]"

# ms since navigation start at the first frame where every chart shows data; false before
CHARTS_DRAWN = f"""() => {{
  const charts = {CHARTS};
  return charts.length > 0 && charts.every({HAS_DATA}) ? performance.now() : false;
}}"""

# the same for the charts the first screen shows (any part of them in the viewport): [ms, how many]
FIRST_SCREEN_DRAWN = f"""() => {{
  const shown = {CHARTS}.filter((el) => {{
    const r = el.getBoundingClientRect();
    return r.bottom > 0 && r.top < window.innerHeight;
  }});
  return shown.length > 0 && shown.every({HAS_DATA}) ? [performance.now(), shown.length] : false;
}}"""

# measurement only: main-thread tasks of 50 ms or more (the Long Tasks API), [start, duration] in ms
LONG_TASKS = """window.__cwLongTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__cwLongTasks.push([e.startTime, e.duration]);
}).observe({ type: "longtask", buffered: true });"""

# measurement only: when plotly.min.js has run (its load event fires right after it executed)
PLOTLY_TIMER = """document.addEventListener("load", (event) => {
  if ((event.target.src || "").includes("plotly.min.js")) window.__cwPlotlyRan = performance.now();
}, true);"""

# where the time went, in ms since navigation start (resource timings of this page load)
BREAKDOWN = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource");
  const stats = res.find((r) => r.name.includes("/stats?"));
  const plotly = res.find((r) => r.name.includes("plotly.min.js"));
  return {
    "HTML received": nav.responseEnd,
    "plotly.min.js received": plotly ? plotly.responseEnd : NaN,
    "stats request sent": stats ? stats.startTime : NaN,
    "stats received": stats ? stats.responseEnd : NaN,
    "plotly.min.js compiled and run": window.__cwPlotlyRan ?? NaN,
    "DOMContentLoaded": nav.domContentLoadedEventEnd,
  };
}"""


def _visit(page: Page, url: str, timeout_ms: float = 60_000) -> dict[str, float]:
    """One page load: ms until the first screen's charts and all of them show data, the longest task
    running in between (0 when none reached 50 ms), and how many charts the first screen shows."""
    page.goto(url, wait_until="commit")
    first, shown = page.wait_for_function(FIRST_SCREEN_DRAWN, polling="raf", timeout=timeout_ms).json_value()
    every = float(page.wait_for_function(CHARTS_DRAWN, polling="raf", timeout=timeout_ms).json_value())
    tasks = page.evaluate("() => window.__cwLongTasks")
    between = [d for start, d in tasks if first <= start + d and start < every]
    return {"first": float(first), "all": every, "longest_task": max(between, default=0.0), "shown": shown}


def _visits(browser: Browser, url: str, errors: list[str]) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """One browser context (a user's profile, empty at first), the page loaded three times: the
    timings of each (see _visit) and its breakdown."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(PLOTLY_TIMER)
    context.add_init_script(LONG_TASKS)
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        times, breakdowns = [], []
        for _ in VISITS:
            times.append(_visit(page, url))
            breakdowns.append(page.evaluate(BREAKDOWN))
            page.goto("about:blank")
        return times, breakdowns
    finally:
        context.close()


def measure_page_loads(bases: dict[str, str], run_id: int, n: int) -> dict[str, dict[str, object]]:
    """Per server (label -> base URL), n users' three visits each, the servers taking turns."""
    times: dict[str, list[list[dict[str, float]]]] = {label: [] for label in bases}
    parts: dict[str, list[list[dict[str, float]]]] = {label: [] for label in bases}
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for base in bases.values():  # warms the browser process and each server; not counted
                _visits(browser, f"{base}/runs/{run_id}", errors)
            for _ in range(n):
                for label, base in bases.items():
                    visit_times, breakdowns = _visits(browser, f"{base}/runs/{run_id}", errors)
                    times[label].append(visit_times)
                    parts[label].append(breakdowns)
        finally:
            browser.close()
    if errors:
        raise RuntimeError(f"the run page raised: {errors[:3]}")
    return {
        label: {
            **{
                f"{key}_ms": {visit: [t[i][key] for t in times[label]] for i, visit in enumerate(VISITS)}
                for key in ("first", "all", "longest_task")
            },
            "shown": sorted({t[i]["shown"] for t in times[label] for i in range(len(VISITS))}),
            "breakdown": {
                visit: {k: statistics.median(p[i][k] for p in parts[label]) for k in parts[label][0][i]}
                for i, visit in enumerate(VISITS)
            },
        }
        for label in bases
    }
