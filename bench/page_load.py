"""Time until a run page is interactive in a real Chromium: navigation start until all eight charts
show their first data, read from the DOM every animation frame, so it needs nothing from the page's JS.
"""

from __future__ import annotations

import statistics

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
VISITS = ("first visit", "second visit", "third visit")

# ms since navigation start at the first frame where every chart shows data; false before.
# A data line is a `.scatterlayer path.js-line` with a real path (legend swatches live elsewhere);
# the class heatmap draws an <image> once it has data.
CHARTS_DRAWN = """() => {
  const line = (id) => [...document.querySelectorAll(`#${id} .scatterlayer path.js-line`)]
    .some((p) => (p.getAttribute("d") || "").length > 20);
  const lines = ["chart-entropy", "chart-logits", "chart-confidence", "chart-loss", "chart-grad",
                 "chart-validation", "chart-calibration"].every(line);
  const heat = document.querySelector("#chart-classes .hm image");
  return lines && heat !== null && (heat.getAttribute("href") || "").length > 0 ? performance.now() : false;
}"""

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


def _interactive(page: Page, timeout_ms: float = 60_000) -> float:
    return float(page.wait_for_function(CHARTS_DRAWN, polling="raf", timeout=timeout_ms).json_value())


def _visits(browser: Browser, url: str, errors: list[str]) -> tuple[list[float], list[dict[str, float]]]:
    """One browser context (a user's profile, empty at first), the page loaded three times: ms until
    interactive and the breakdown of each."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(PLOTLY_TIMER)
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        times, breakdowns = [], []
        for _ in VISITS:
            page.goto(url, wait_until="commit")
            times.append(_interactive(page))
            breakdowns.append(page.evaluate(BREAKDOWN))
            page.goto("about:blank")
        return times, breakdowns
    finally:
        context.close()


def measure_page_loads(bases: dict[str, str], run_id: int, n: int) -> dict[str, dict[str, object]]:
    """Per server (label -> base URL), n users' three visits each, the servers taking turns."""
    times: dict[str, list[list[float]]] = {label: [] for label in bases}
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
            "visits_ms": {visit: [t[i] for t in times[label]] for i, visit in enumerate(VISITS)},
            "breakdown": {
                visit: {k: statistics.median(p[i][k] for p in parts[label]) for k in parts[label][0][i]}
                for i, visit in enumerate(VISITS)
            },
        }
        for label in bases
    }
