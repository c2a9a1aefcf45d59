"""The run page's charts in a real Chromium: every warning marked on every step chart at its step (onset and
escalation), exploding_logits's threshold drawn where the rule fires, cards that link to their chart and never
move the charts, and each chart's view (log axis, smoothing, outlier range, logits / T, the x axis, a zoom
shared by all), remembered across a reload."""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.request
from collections.abc import Iterator

import pytest
from chromium import MISSING, OUTPUT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

# collapse-prone at lr 0.3 (6 epochs of 25 batches): exploding_logits at once, then dominant_class, which
# turns critical later (an escalation)
ESCALATING = {"preset": "collapse-prone", "name": "escalating", "config": {"epochs": 6, "lr": 0.3}}
# collapse-prone on 4,000 samples: its one warning (too_uniform) is raised near step 60, well after the start
LATE_WARNING = {
    "preset": "collapse-prone",
    "name": "late warning",
    "config": {"epochs": 4, "data": {"n_samples": 4000}},
}
BATCH_CHARTS = ["chart-entropy", "chart-logits", "chart-confidence", "chart-classes", "chart-loss", "chart-grad",
                "chart-optim", "chart-head", "chart-diversity", "chart-logit-stats"]  # fmt: skip
VALIDATION_CHARTS = ["chart-validation", "chart-calibration", "chart-val-entropy"]
STEP_CHARTS = BATCH_CHARTS + VALIDATION_CHARTS
ALL_CHARTS = [*STEP_CHARTS, "chart-val-classes", "chart-confusion"]
X_AXIS = "document.getElementById(id)._fullLayout.xaxis"  # of the chart `id`, as drawn
# cards shown, the header's status, the warnings panel's top and the first chart's top (px from the page's top)
_POSITIONS = """[document.querySelectorAll('#warnings .warning').length,
  document.getElementById('run-header').dataset.status,
  document.getElementById('warnings').getBoundingClientRect().top + window.scrollY,
  document.getElementById('chart-entropy').getBoundingClientRect().top + window.scrollY]"""


def _api(base: str, path: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _wait_finished(base: str, run_id: int, seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = _api(base, f"/api/runs/{run_id}")
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish within {seconds} s")


@pytest.fixture(scope="module")
def finished(server: str) -> Iterator[dict]:
    """The escalating run, trained to the end: {run, warnings}."""
    run = _wait_finished(server, _api(server, "/api/runs", ESCALATING)["id"])
    assert run["status"] == "completed", run
    yield {"run": run, "warnings": _api(server, f"/api/runs/{run['id']}/warnings")}


def _open(page: sync_api.Page, run_id: int) -> None:
    page.goto(f"/runs/{run_id}")
    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)


def _layout(page: sync_api.Page, chart: str, path: str) -> object:
    return page.evaluate(f"() => document.getElementById('{chart}').layout.{path}")


def _named(page: sync_api.Page, chart: str, what: str) -> dict[str, dict]:
    items = _layout(page, chart, what) or []
    return {item["name"]: item for item in items if str(item.get("name", "")).startswith("warning ")}


def _tools(page: sync_api.Page, chart: str) -> sync_api.Locator:
    return page.locator(f".chart-tools[data-chart='{chart}']")


def _scroll_through(page: sync_api.Page) -> None:
    # a chart off screen catches up with live data when scrolled to (chart_scheduler.js)
    for chart in ALL_CHARTS:
        page.locator(f"#{chart}").scroll_into_view_if_needed()
        page.wait_for_timeout(100)
    page.wait_for_timeout(700)


def test_a_warning_card_arriving_mid_run_does_not_move_the_charts(page: sync_api.Page, server: str) -> None:
    # a long run holds the only worker, so the page is open before the watched run starts
    blocker = _api(server, "/api/runs", {"preset": "fixed", "name": "blocker", "config": {"epochs": 5000}})
    run_id = _api(server, "/api/runs", LATE_WARNING)["id"]
    _open(page, run_id)
    assert page.locator("#warnings .warning").count() == 0
    # each animation frame's positions: the header (its "preparing" notice) may change height on its own, so
    # it may move the panel; what lies between the panel's top and the charts must not change.
    page.evaluate(f"() => {{ window.__tops = []; const sample = () => {{ window.__tops.push({_POSITIONS}); "
                  "requestAnimationFrame(sample); }; sample(); }")  # fmt: skip
    _api(server, f"/api/runs/{blocker['id']}/cancel", {})
    page.wait_for_function(
        "() => document.getElementById('run-header').dataset.status === 'running'"
        " && document.getElementById('chart-entropy').data?.[0]?.x?.length > 1",
        timeout=120_000,
    )
    before = page.evaluate(f"() => {_POSITIONS}")
    assert before[0] == 0, "the warning came before the run was seen running"
    page.screenshot(path=OUTPUT / "run_charts_before_warning.png")
    page.locator("#warnings .warning").first.wait_for(timeout=120_000)
    page.wait_for_timeout(300)
    after = page.evaluate(f"() => {_POSITIONS}")
    page.screenshot(path=OUTPUT / "run_charts_after_warning.png")
    assert after[3] - after[2] == before[3] - before[2], f"the card moved the charts: {before} -> {after}"

    tops = page.evaluate("() => window.__tops")
    arrival = next(i for i, (cards, *_) in enumerate(tops) if cards > 0)
    assert arrival > 0 and tops[arrival - 1][1] == "running", "the card should arrive mid-run"
    (_, _, panel_was, top_was), (_, _, panel, top) = tops[arrival - 1 : arrival + 1]
    assert top - panel == top_was - panel_was, "the panel grew when the card arrived"
    if panel == panel_was:  # the frame the card came in: the first chart is where it was
        assert top == top_was, f"the first chart moved from {top_was} to {top} px when the card arrived"
    assert {t - p for _, status, p, t in tops if status == "running"} == {top - panel}, "the charts moved mid-run"
    # and the warning is marked on every step chart at its step
    warning = _api(server, f"/api/runs/{run_id}/warnings")[0]
    for chart in BATCH_CHARTS:
        assert _named(page, chart, "shapes")[f"warning {warning['id']}"]["x0"] == warning["step"], chart
    _wait_finished(server, run_id)


def test_every_warning_is_marked_on_every_step_chart_at_its_step(page: sync_api.Page, finished: dict) -> None:
    warnings = finished["warnings"]
    escalated = [w for w in warnings if w["message"].startswith("Now critical")]
    assert escalated, f"the run should escalate a warning: {[(w['kind'], w['severity']) for w in warnings]}"
    _open(page, finished["run"]["id"])
    _scroll_through(page)
    page.screenshot(path=OUTPUT / "run_charts_marked.png", full_page=True)
    for chart in STEP_CHARTS:
        shapes, labels = _named(page, chart, "shapes"), _named(page, chart, "annotations")
        for w in warnings:
            name = f"warning {w['id']}"
            assert name in shapes and name in labels, f"{chart} does not mark {w['kind']} (id {w['id']})"
            assert shapes[name]["x0"] == shapes[name]["x1"] == w["step"], (
                f"{chart}: {w['kind']} not at step {w['step']}"
            )
            assert shapes[name]["yref"] == "paper", "a mark spans the plot's height"
            assert w["kind"] in labels[name]["text"] and labels[name]["x"] == w["step"]
        for w in escalated:  # drawn apart from an onset: solid, and named so
            assert shapes[f"warning {w['id']}"]["line"]["dash"] == "solid"
            assert "now critical" in labels[f"warning {w['id']}"]["text"]
        onsets = [w for w in warnings if w not in escalated]
        assert all(shapes[f"warning {w['id']}"]["line"]["dash"] == "dash" for w in onsets)


def test_the_logit_chart_draws_the_rules_threshold_and_a_logits_over_t_view(
    page: sync_api.Page, finished: dict
) -> None:
    temperature = finished["run"]["config"]["temperature"]
    _open(page, finished["run"]["id"])

    def lines() -> list[float]:
        shapes = _layout(page, "chart-logits", "shapes")
        return sorted(s["y0"] for s in shapes if s.get("xref") == "paper" and s["y0"] == s["y1"])

    assert lines() == [-10 * temperature, 10 * temperature], "exploding_logits fires past ±10·T on raw logits"
    labels = [a["text"] for a in _layout(page, "chart-logits", "annotations") if a.get("xref") == "paper"]
    assert any(f"±{10 * temperature:g}" in text and "10·T" in text for text in labels), labels
    raw_max = page.evaluate("() => document.getElementById('chart-logits').data[0].y")

    _tools(page, "chart-logits").get_by_label("logits / T").check()
    page.wait_for_function("() => document.getElementById('chart-logits').layout.yaxis.title.text === 'logit / T'")
    assert lines() == [-10, 10]
    scaled_max = page.evaluate("() => document.getElementById('chart-logits').data[0].y")
    assert scaled_max == pytest.approx([v / temperature if v is not None else None for v in raw_max])


def test_a_card_links_to_its_chart_and_marks_its_warning(page: sync_api.Page, finished: dict) -> None:
    _open(page, finished["run"]["id"])
    charts = {"exploding_logits": "chart-logits", "dominant_class": "chart-classes"}
    for w in finished["warnings"]:
        link = page.locator(f"#warnings article[data-warning-id='{w['id']}'] a.chart-link")
        assert link.get_attribute("href") == f"#{charts[w['kind']]}"
    warning = next(w for w in finished["warnings"] if w["kind"] == "exploding_logits")
    page.locator(f"#warnings article[data-warning-id='{warning['id']}'] a.chart-link").click()
    page.wait_for_url("**#chart-logits")
    box = page.evaluate("() => document.getElementById('chart-logits').getBoundingClientRect().toJSON()")
    assert 0 <= box["top"] < page.viewport_size["height"] / 2, f"the chart is not brought into view: {box}"
    mark = page.wait_for_function(
        f"() => document.getElementById('chart-logits').layout.shapes.find((s) => s.name === 'warning {warning['id']}')"
        "?.line.width >= 4 || null"
    )
    assert mark.json_value()
    page.screenshot(path=OUTPUT / "run_charts_card_link.png")


def _robust_top(values: list[float]) -> float:
    kept = sorted(v for v in values if v is not None and math.isfinite(v))
    # the page's Math.round: halves round up (Python's round() would take the even neighbour, and where the
    # values jump between two neighbours the two ranges differ several-fold)
    lo, hi = (kept[math.floor(q * (len(kept) - 1) + 0.5)] for q in (0.01, 0.99))
    return hi + 0.08 * (hi - lo)


def test_view_controls_work_and_are_remembered_across_a_reload(page: sync_api.Page, finished: dict) -> None:
    _open(page, finished["run"]["id"])
    losses = page.evaluate(
        "() => document.getElementById('chart-loss').data.filter((t) => (t.yaxis ?? 'y') === 'y').flatMap((t) => t.y)"
    )
    entropy_traces = page.evaluate("() => document.getElementById('chart-entropy').data.length")

    _tools(page, "chart-grad").get_by_label("log y axis").check()
    _tools(page, "chart-loss").get_by_label("ignore outliers").check()
    page.evaluate("""() => {
      const slider = document.querySelector(".chart-tools[data-chart='chart-entropy'] input[data-setting='ema']");
      slider.value = "0.9";
      slider.dispatchEvent(new Event("input", { bubbles: true }));
    }""")

    def check_views() -> None:
        # each chart takes its new view at the next animation frame, the two checks' maybe at different ones:
        # wait for each chart's own, or the loss chart's range may still be the autorange its spike sets
        page.wait_for_function("() => document.getElementById('chart-grad').layout.yaxis.type === 'log'")
        page.wait_for_function("() => document.getElementById('chart-loss').layout.yaxis.autorange === false")
        top = _layout(page, "chart-loss", "yaxis.range[1]")
        assert top == pytest.approx(_robust_top(losses)), "the range holds the 1st to 99th percentile"
        assert top < max(v for v in losses if v is not None) / 2, "the step-0 spike no longer sets the range"
        page.wait_for_function(f"() => document.getElementById('chart-entropy').data.length > {entropy_traces}")
        raw, smooth = page.evaluate(
            "() => document.getElementById('chart-entropy').data.filter((t) => t.legendgroup === 'mean')"
            ".map((t) => ({y: t.y, opacity: t.opacity ?? 1, legend: t.showlegend !== false}))"
        )
        assert raw["opacity"] < 0.5 and not raw["legend"], "the raw line stays, faint"
        assert smooth["opacity"] == 1 and smooth["legend"] and smooth["y"] != raw["y"]
        values = [v for v in raw["y"] if v is not None]
        assert max(smooth["y"]) - min(smooth["y"]) < max(values) - min(values), "smoothed lines vary less"
        assert page.input_value(".chart-tools[data-chart='chart-entropy'] input[data-setting='ema']") == "0.9"
        assert _tools(page, "chart-entropy").locator("output").inner_text() == "0.90"
        assert _tools(page, "chart-grad").get_by_label("log y axis").is_checked()
        assert _tools(page, "chart-loss").get_by_label("ignore outliers").is_checked()

    check_views()
    page.screenshot(path=OUTPUT / "run_charts_views.png", full_page=True)
    page.reload()
    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)
    check_views()
    assert _layout(page, "chart-head", "yaxis.type") != "log", "a setting belongs to its own chart"


def test_zoom_is_shared_by_every_step_chart_and_validation_is_aligned(page: sync_api.Page, finished: dict) -> None:
    _open(page, finished["run"]["id"])
    last = finished["run"]["last_step"]

    def ranges() -> dict[str, list[float]]:
        return page.evaluate(f"() => Object.fromEntries({STEP_CHARTS}.map((id) => [id, {X_AXIS}.range]))")

    for chart, (lo, hi) in ranges().items():  # validation passes start later: their axes still span the run
        assert lo <= 0.05 * last and hi >= 0.95 * last, f"{chart} shows {lo}..{hi}, not the run's 0..{last}"
    page.evaluate("() => Plotly.relayout('chart-loss', {'xaxis.range': [20, 80]})")
    page.wait_for_function(
        f"() => {STEP_CHARTS}.every((id) => JSON.stringify({X_AXIS}.range) === '[20,80]')",
        timeout=10_000,
    )
    page.locator("#reset-zoom").click()
    page.wait_for_function(
        f"() => {STEP_CHARTS}.every((id) => {X_AXIS}.autorange === true)",
        timeout=10_000,
    )


def test_epoch_boundaries_are_marked_and_the_x_axis_can_count_epochs(page: sync_api.Page, finished: dict) -> None:
    run = finished["run"]
    per_epoch = run["info"]["steps_per_epoch"]
    epochs = run["config"]["epochs"]
    _open(page, run["id"])
    for chart in STEP_CHARTS:
        xs = page.evaluate(
            f"() => document.getElementById('{chart}').data.find((t) => t.name === 'epoch boundaries').x"
        )
        lines = {x for x, y in zip(xs, page.evaluate(
            f"() => document.getElementById('{chart}').data.find((t) => t.name === 'epoch boundaries').y"
        ), strict=True) if y == 1}  # fmt: skip
        assert lines == {per_epoch * e for e in range(1, epochs)}, f"{chart}: boundaries at {sorted(lines)}"

    page.select_option("#x-axis", "epoch")
    page.wait_for_function("() => document.getElementById('chart-entropy').layout.xaxis.title.text === 'epoch'")

    def in_epochs() -> None:
        xs = page.evaluate("() => document.getElementById('chart-entropy').data[0].x")
        assert xs[-1] == pytest.approx(run["last_step"] / per_epoch)
        warning = finished["warnings"][-1]
        mark = _named(page, "chart-grad", "shapes")[f"warning {warning['id']}"]
        assert mark["x0"] == pytest.approx(warning["step"] / per_epoch)

    in_epochs()
    page.reload()
    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)
    assert page.input_value("#x-axis") == "epoch"
    in_epochs()


def _rgb(color: str) -> tuple[int, ...]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def _colour_at(scale: list, value: float) -> tuple[float, ...]:
    for (lo, c0), (hi, c1) in itertools.pairwise(scale):
        if lo <= value <= hi:
            t = (value - lo) / (hi - lo)
            return tuple(a + t * (b - a) for a, b in zip(_rgb(c0), _rgb(c1), strict=True))
    raise AssertionError(f"{value} is outside the colour scale {scale}")


def test_class_heatmap_tells_a_uniform_share_from_a_dominant_one(page: sync_api.Page, finished: dict) -> None:
    _open(page, finished["run"]["id"])
    heat = page.evaluate(
        "() => { const t = document.getElementById('chart-classes').data[0];"
        " return {scale: t.colorscale, bar: t.colorbar}; }"
    )
    assert isinstance(heat["scale"], list), f"a named scale: {heat['scale']}"
    uniform, dominant = _colour_at(heat["scale"], 1 / 8), _colour_at(heat["scale"], 0.3)
    assert math.dist(uniform, dominant) > 100, f"0.125 {uniform} and 0.3 {dominant} look alike"
    assert "1/8 (uniform)" in heat["bar"]["ticktext"]


def test_every_chart_has_a_title_axis_titles_and_what_was_recorded(page: sync_api.Page, finished: dict) -> None:
    run = finished["run"]
    _open(page, run["id"])
    for chart in ALL_CHARTS:
        layout = page.evaluate(f"() => document.getElementById('{chart}').layout")
        assert layout["title"]["text"], f"{chart} has no title"
        assert layout["xaxis"]["title"]["text"] and layout["yaxis"]["title"]["text"], f"{chart} lacks an axis title"
    stats = page.request.get(f"/api/runs/{run['id']}/stats").json()["columns"]

    def trace(chart: str, name: str) -> dict:
        return page.evaluate(f"() => document.getElementById('{chart}').data.find((t) => t.name.startsWith('{name}'))")

    for chart, name, column in [
        ("chart-optim", "learning rate", "lr"), ("chart-optim", "throughput", "samples_per_s"),
        ("chart-head", "classifier (head) weight norm", "head_weight_norm"),
        ("chart-entropy", "mean as deployed", "deploy_entropy_mean"),
        ("chart-confidence", "one-hot as deployed", "deploy_onehot_frac"),
        ("chart-confidence", "max-probability as deployed", "deploy_maxprob_mean"),
    ]:  # fmt: skip
        assert trace(chart, name)["y"] == pytest.approx(stats[column]), f"{column} is not drawn on {chart}"
    last = page.request.get(f"/api/runs/{run['id']}/evals").json()[-1]
    confusion = page.evaluate("() => document.getElementById('chart-confusion').data[0]")
    assert confusion["customdata"] == last["confusion"]
    bars = page.evaluate("() => document.getElementById('chart-val-classes').data.map((t) => t.y)")
    assert bars == [pytest.approx(last["pred_hist"]), pytest.approx(last["target_hist"])]
