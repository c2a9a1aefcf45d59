"""Time until a run page is interactive in a real Chromium: navigation start until all eight charts
show their first data, read from the DOM every animation frame, so it needs nothing from the page's JS.
"""

from __future__ import annotations

import statistics

from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip

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

BREAKDOWN = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = performance.getEntriesByType("resource");
  const end = (part) => Math.max(0, ...res.filter((r) => r.name.includes(part)).map((r) => r.responseEnd));
  const stats = res.find((r) => r.name.includes("/stats?"));
  return {
    "HTML received": nav.responseEnd,
    "plotly.min.js received": end("plotly.min.js"),
    "DOMContentLoaded (scripts run)": nav.domContentLoadedEventEnd,
    "stats request sent": stats ? stats.startTime : -1,
    "stats received": stats ? stats.responseEnd : -1,
  };
}"""


def _interactive(page: Page, timeout_ms: float = 60_000) -> float:
    return float(page.wait_for_function(CHARTS_DRAWN, polling="raf", timeout=timeout_ms).json_value())


def measure_page_loads(base: str, run_id: int, n: int) -> dict[str, object]:
    """n cold loads (a new browser context each: nothing cached) each followed by one reload."""
    url = f"{base}/runs/{run_id}"
    cold: list[float] = []
    warm: list[float] = []
    parts: list[dict[str, float]] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for i in range(n + 1):  # the first load warms the browser process itself; not counted
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url, wait_until="commit")
                t_cold = _interactive(page)
                breakdown = page.evaluate(BREAKDOWN)
                page.reload(wait_until="commit")
                t_warm = _interactive(page)
                context.close()
                if i:
                    cold.append(t_cold)
                    warm.append(t_warm)
                    parts.append(breakdown)
        finally:
            browser.close()
    if errors:
        raise RuntimeError(f"the run page raised: {errors[:3]}")
    return {
        "cold_ms": cold,
        "warm_ms": warm,
        "breakdown": {k: statistics.median(b[k] for b in parts) for k in parts[0]},
    }
