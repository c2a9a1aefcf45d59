"""The dashboard in a real Chromium against the real server: queue a collapse-prone run from the form,
watch its charts grow live, apply the advice of its warning, and compare the two runs."""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import urllib.request
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, MISSING, OUTPUT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

# 20 epochs of the default data = 500 batches: a few seconds on a fast CPU, ~25 s on a busy shared
# one; long enough to watch points arrive, and past step 50 where collapse-prone's warning fires
EPOCHS = "20"


def _calls(page: sync_api.Page, method: str, chart: str) -> int:
    return page.evaluate(f"() => window.__plotCalls['{method} {chart}'] ?? 0")


# is the chart (by id) wholly below the viewport?
_BELOW_FOLD = "((id) => document.getElementById(id).getBoundingClientRect().top > window.innerHeight)"


def _points(page: sync_api.Page) -> int:
    return page.evaluate("() => document.getElementById('chart-entropy').data[0].x.length")


def test_collapse_run_live_charts_advice_and_compare(page: sync_api.Page) -> None:
    page.goto("/")
    page.locator(".page-head").get_by_role("link", name="New run").click()
    page.wait_for_url(re.compile(r"/runs/new$"))

    page.select_option("#preset", "collapse-prone")
    assert float(page.input_value("#label_smoothing")) == 0.0, "picking the preset must fill its values"
    assert page.input_value("#max_grad_norm") == "", "collapse-prone has clipping off"
    page.fill("#name", "browser collapse")
    page.fill("#epochs", EPOCHS)
    page.locator("#run-form").get_by_role("button", name="Queue run").click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if anything reloads the page

    # live: the entropy chart gains points over SSE while the run trains
    page.wait_for_function("() => document.getElementById('chart-entropy')?.data?.[0]?.x?.length > 0", timeout=60_000)
    first = _points(page)
    page.wait_for_function(f"() => document.getElementById('chart-entropy').data[0].x.length > {first}", timeout=30_000)
    assert _points(page) > first
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"

    # a collapse warning with advice appears in the panel, still without a reload
    advice = page.locator("#warnings .warning .apply-advice").first
    advice.wait_for(timeout=90_000)
    assert page.locator("#warnings .warning .advice").first.inner_text().startswith("Advice:")
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    page.locator("#run-header .status-completed, #run-header .status-failed, #run-header .status-diverged").wait_for(
        timeout=120_000
    )
    # a chart far below the fold (the last; even before the warning pushed the charts down) is drawn
    # when the tab is idle but not redrawn while off screen; scrolled to, it catches up
    assert page.evaluate(f"() => {_BELOW_FOLD}('chart-calibration')"), "the last chart should be below the fold"
    assert page.evaluate("() => document.getElementById('chart-calibration').data !== undefined"), "not drawn"
    assert _calls(page, "extendTraces", "chart-entropy") > 0
    assert _calls(page, "extendTraces", "chart-calibration") == 0, "a chart below the fold was redrawn live"
    evals = len(page.request.get(f"/api/runs/{run_id}/evals").json())
    page.locator("#chart-calibration").scroll_into_view_if_needed()
    page.wait_for_function(
        f"() => document.getElementById('chart-calibration').data[0].x.length === {evals}", timeout=10_000
    )
    page.wait_for_timeout(800)  # the heatmap redraws at most twice a second
    page.screenshot(path=OUTPUT / "run_page.png", full_page=True)
    # the mode bar offers no way to send the run's data to a third party
    page.locator("#chart-entropy").hover()
    assert page.locator("#chart-entropy .modebar-btn[data-title='Download plot as a PNG']").count() == 1
    assert page.locator(".modebar-btn[data-title='Share chart...']").count() == 0

    # applying the advice queues a child run and opens its page
    advice.click()
    page.wait_for_url(re.compile(rf"/runs/(?!{run_id}$)\d+$"))
    child_id = int(page.url.rsplit("/", 1)[1])
    assert page.locator("#run-header .facts a").first.inner_text() == f"#{run_id}"
    assert page.locator("#parent-diff tbody tr").count() >= 1, "the change from the parent is listed"
    assert page.locator("#lineage").inner_text().startswith(f"Lineage: #{run_id} → #{child_id} (this run)")
    # back on the parent, the advice says where it went and is not offered again
    page.go_back()
    page.wait_for_url(re.compile(rf"/runs/{run_id}$"))
    applied = page.locator("#warnings .applied a", has_text=f"#{child_id}")
    applied.first.wait_for(timeout=10_000)
    warning_id = applied.first.locator("xpath=ancestor::article").get_attribute("data-warning-id")
    assert page.locator(f"#warnings .apply-advice[data-warning-id='{warning_id}']").count() == 0
    page.screenshot(path=OUTPUT / "run_page_applied.png", full_page=True)

    # both runs are in the list, the child with its parent link; its status follows the run live
    page.goto("/")
    page.evaluate("() => { window.__sameDocument = true; }")
    child_row = page.locator(f"#runs-body tr[data-run-id='{child_id}']")
    assert child_row.locator("td").last.inner_text() == f"#{run_id}"
    assert child_row.get_attribute("data-status") in ("queued", "running"), "the child finished before the list loaded"
    child_row.locator(".badge.status-completed").wait_for(timeout=120_000)
    assert page.evaluate("() => window.__sameDocument === true"), "the list reloaded instead of refreshing"
    page.screenshot(path=OUTPUT / "runs_list.png")
    page.check(f"#runs-body input.pick[value='{run_id}']")
    page.check(f"#runs-body input.pick[value='{child_id}']")
    page.get_by_role("button", name=re.compile("Compare selected")).click()
    page.wait_for_url(re.compile(r"/compare\?ids="))
    page.wait_for_function("() => document.getElementById('compare-entropy')?.data?.length === 4", timeout=30_000)
    assert page.locator("#compare-diff tbody tr").count() >= 1
    page.screenshot(path=OUTPUT / "compare_page.png", full_page=True)


def test_live_charts_redrawn_from_history_keep_every_step_and_the_zoom(page: sync_api.Page) -> None:
    # a page left open on a run redraws its charts from the downsampled history every live_points_limit
    # live points; lowered here from 10,000 to 40 so a short run crosses it several times
    def lower_limit(route: sync_api.Route) -> None:
        response = route.fetch()
        html, found = re.subn(r'"live_points_limit": \d+', '"live_points_limit": 40', response.text())
        assert found == 1, "the run page's chart-meta has no live_points_limit"
        route.fulfill(response=response, body=html)

    page.route(re.compile(r"/runs/\d+$"), lower_limit)
    body = {"preset": "fixed", "name": "redrawn live", "config": {"epochs": 12}}
    response = page.request.post("/api/runs", data=body)
    assert response.status == 201, response.text()
    run_id = response.json()["id"]
    page.goto(f"/runs/{run_id}")
    page.wait_for_function("() => document.getElementById('chart-entropy')?.data?.[0]?.x?.length > 0", timeout=60_000)
    page.evaluate("() => Plotly.relayout('chart-entropy', {'xaxis.range': [0, 30]})")
    page.locator("#run-header .status-completed").wait_for(timeout=120_000)
    steps = page.request.get(f"/api/runs/{run_id}").json()["steps"]
    page.wait_for_function(f"() => document.getElementById('chart-entropy').data[0].x.at(-1) === {steps - 1}")

    # its first draw, then one per redraw from the history
    assert _calls(page, "react", "chart-entropy") >= 3, "the charts were not redrawn from the history"
    xs = page.evaluate("() => document.getElementById('chart-entropy').data[0].x")
    assert xs == list(range(steps)), "a step is missing or shown twice"  # under 2000 steps: not downsampled
    assert page.evaluate("() => document.getElementById('chart-entropy').layout.xaxis.range") == [0, 30]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def test_a_page_on_another_origin_can_neither_cancel_nor_create_runs(server: str, tmp_path: Path) -> None:
    # the probe: a page elsewhere cancelled a running run and queued one through the form
    victim = _api(server, "/api/runs", {"preset": "fixed", "config": {"epochs": 5000}})
    before = _api(server, "/api/runs?limit=1")["total"]
    evil = tmp_path / "evil.html"
    evil.write_text(f"""<!doctype html><form id="f" method="post" action="{server}/runs/new">
<input name="preset" value="collapse-prone"><input name="epochs" value="1"></form>
<script>
fetch("{server}/api/runs/{victim["id"]}/cancel", {{method: "POST", mode: "no-cors"}})
  .catch(() => null).finally(() => document.getElementById("f").submit());
</script>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another port: another origin
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            tab = browser.new_page()
            tab.goto(f"http://127.0.0.1:{other.server_address[1]}/evil.html")
            tab.wait_for_url(f"{server}/runs/new", timeout=15_000)  # the form went out and was answered
            assert "another origin" in tab.content()
            browser.close()
    finally:
        other.shutdown()
    assert _api(server, f"/api/runs/{victim['id']}")["status"] in ("queued", "running"), "not cancelled"
    assert _api(server, "/api/runs?limit=1")["total"] == before, "nothing queued"
    _api(server, f"/api/runs/{victim['id']}/cancel", {})  # frees the worker for what follows
