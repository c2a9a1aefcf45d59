"""The run page's later views in a real Chromium, on an external run streamed through the ingest API (no
training, so each test takes seconds): the wall-time axis, the clipping rate and logit statistics, epoch
lines kept few, warnings drawn with the first draw, the chart index, the header's tags and notes, the
advice snippet on a phone, and the charts in dark mode."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from chromium import MISSING, OUTPUT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

STEPS, PER_EPOCH, BATCH = 800, 4, 32  # 200 epochs, more than the 40 epoch lines a chart draws
CLASSES = 4
# throughput: 3,200 samples/s (0.01 s a batch) for the first half, 1,600 (0.02 s) after
SLOW_FROM = STEPS // 2
WALL_S = SLOW_FROM * BATCH / 3200 + (STEPS - SLOW_FROM) * BATCH / 1600  # 4 + 8 = 12 s
WARNING_STEP = 600  # its mark sits at 4 + 200 * 0.02 = 8 s on the wall-time axis
NOTES = "Baseline for the sweep; rerun with label smoothing."
# two validation passes whose confusion matrices differ: the first all on the diagonal, the last all class 0
EVAL_PASSES = {
    399: [[5 if i == j else 0 for j in range(CLASSES)] for i in range(CLASSES)],
    799: [[5] + [0] * (CLASSES - 1) for _ in range(CLASSES)],
}
# a long config key: the snippet holding it must scroll sideways on a phone, not widen the page
OVERRIDES = {"label_smoothing": 0.1, "optimizer_config_with_a_rather_long_name_weight_decay": 0.0005}


def _api(base: str, path: str, body: dict | None = None, method: str | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _values() -> dict[str, list[float]]:
    steps = range(STEPS)
    return {
        "entropy_mean": [1.2 - 0.5 * s / STEPS for s in steps],
        "grad_norm": [1.0 + (s % 7) / 7 for s in steps],
        "clipped": [1.0 if s % 4 == 0 else 0.0 for s in steps],  # a quarter of the batches
        "logit_mean": [0.1 * (s % 5) for s in steps],
        "logit_std": [1.0 + s / STEPS for s in steps],
        "logit_margin": [0.5 + 2 * s / STEPS for s in steps],
        "samples_per_s": [3200.0 if s < SLOW_FROM else 1600.0 for s in steps],
        "lr": [0.1] * STEPS,
    }


@pytest.fixture(scope="module")
def external(server: str) -> Iterator[dict]:
    """A finished external run: 800 batches over 200 epochs, a warning with advice, tags and notes."""
    run = _api(server, "/api/ingest/runs", {
        "name": "streamed", "config": {"batch_size": BATCH, "lr": 0.1, "label_smoothing": 0.0, "temperature": 1.0},
        "num_classes": CLASSES, "steps_per_epoch": PER_EPOCH,
    })  # fmt: skip
    chunk = {
        "steps": list(range(STEPS)),
        "epochs": [s // PER_EPOCH for s in range(STEPS)],
        "values": _values(),
        "class_hist": [[0.25] * CLASSES for _ in range(STEPS)],
    }
    _api(server, f"/api/ingest/runs/{run['id']}/chunks", chunk)
    _api(server, f"/api/ingest/runs/{run['id']}/warnings", {
        "kind": "low_entropy", "severity": "warning", "step": WARNING_STEP, "message": "Entropy below h_min.",
        "advice": {"message": "Raise label smoothing.", "overrides": OVERRIDES},
    })  # fmt: skip
    for step, confusion in EVAL_PASSES.items():
        _api(server, f"/api/ingest/runs/{run['id']}/evals", {
            "step": step, "epoch": step // PER_EPOCH, "metrics": {"objective": 1.0, "accuracy": 0.5},
            "pred_hist": [0.25] * CLASSES, "target_hist": [0.25] * CLASSES, "confusion": confusion,
        })  # fmt: skip
    _api(server, f"/api/ingest/runs/{run['id']}/finish", {"status": "completed", "duration_s": WALL_S})
    _api(server, f"/api/runs/{run['id']}", {"tags": ["baseline", "sweep-3"], "notes": NOTES}, method="PATCH")
    yield {"id": run["id"], "warnings": _api(server, f"/api/runs/{run['id']}/warnings")}


def _open(page: sync_api.Page, run_id: int) -> None:
    page.goto(f"/runs/{run_id}")
    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)


def _trace(page: sync_api.Page, chart: str, name: str) -> dict:
    return page.evaluate(
        f"() => document.getElementById('{chart}').data.find((t) => (t.name ?? '').startsWith('{name}'))"
    )


def test_each_chart_is_drawn_once_with_the_warnings_already_marked(page: sync_api.Page, external: dict) -> None:
    _open(page, external["id"])
    (warning,) = external["warnings"]
    calls = page.evaluate("() => window.__plotCalls")
    # marking the warnings after the first draw relayouted every chart drawn so far (a second layout pass)
    assert not [key for key in calls if key.startswith("relayout ")], f"charts relayouted while loading: {calls}"
    for chart in ("chart-entropy", "chart-grad", "chart-logit-stats"):
        names = [s.get("name") for s in page.evaluate(f"() => document.getElementById('{chart}').layout.shapes")]
        assert f"warning {warning['id']}" in names, f"{chart} lacks the warning's mark"
        assert calls.get(f"react {chart}") == 1, f"{chart} drawn {calls.get(f'react {chart}')} times"


def test_a_run_of_many_epochs_draws_few_epoch_lines(page: sync_api.Page, external: dict) -> None:
    _open(page, external["id"])  # its config names no epochs: the page learns them from the data
    trace = _trace(page, "chart-entropy", "epoch boundaries")
    lines = sorted({x for x, y in zip(trace["x"], trace["y"], strict=True) if y == 1})
    assert 10 <= len(lines) <= 40, f"{len(lines)} epoch lines for {STEPS // PER_EPOCH} epochs"
    assert all(x % PER_EPOCH == 0 for x in lines), "a line sits where no epoch starts"


def test_the_x_axis_can_show_wall_time_from_the_recorded_throughput(page: sync_api.Page, external: dict) -> None:
    _open(page, external["id"])
    page.select_option("#x-axis", "time")
    page.wait_for_function(
        "() => document.getElementById('chart-entropy').layout.xaxis.title.text.startsWith('wall time')"
    )
    xs = _trace(page, "chart-entropy", "mean")["x"]
    assert xs[0] == pytest.approx(BATCH / 3200)  # the first batch's end
    assert xs[SLOW_FROM] == pytest.approx(SLOW_FROM * BATCH / 3200 + BATCH / 1600)
    assert xs[-1] == pytest.approx(WALL_S), "the last batch ends after the sum of every batch's time"
    (warning,) = external["warnings"]
    mark = next(s for s in page.evaluate("() => document.getElementById('chart-grad').layout.shapes")
                if s.get("name") == f"warning {warning['id']}")  # fmt: skip
    assert mark["x0"] == pytest.approx(SLOW_FROM * BATCH / 3200 + (WARNING_STEP - SLOW_FROM + 1) * BATCH / 1600)
    page.screenshot(path=OUTPUT / "run_views_wall_time.png")
    page.reload()
    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)
    assert page.input_value("#x-axis") == "time", "the choice is remembered"


def test_clipping_rate_and_logit_statistics_are_drawn(page: sync_api.Page, external: dict) -> None:
    _open(page, external["id"])
    # this run's config names no min_entropy: no h_min line (it was drawn from null, across the plot)
    lines = page.evaluate(
        "() => document.getElementById('chart-entropy').layout.shapes.filter((s) => s.xref === 'paper')"
    )
    assert lines == [], f"a threshold drawn from a setting the run lacks: {lines}"
    rate = _trace(page, "chart-grad", "share clipped, last 50 batches")
    clipped = _values()["clipped"]
    assert rate["yaxis"] == "y2"
    assert rate["y"][-1] == pytest.approx(sum(clipped[-50:]) / 50), "the share of the last 50 batches clipped"
    assert rate["y"][9] == pytest.approx(sum(clipped[:10]) / 10), "early on, the share of the batches so far"
    page.locator("#chart-logit-stats").scroll_into_view_if_needed()
    page.wait_for_function("() => document.getElementById('chart-logit-stats').data?.length > 0")
    values = _values()
    for name, column in [("mean of", "logit_mean"), ("std of", "logit_std"), ("top-1", "logit_margin")]:
        assert _trace(page, "chart-logit-stats", name)["y"] == pytest.approx(values[column]), column
    layout = page.evaluate("() => document.getElementById('chart-logit-stats').layout")
    assert layout["title"]["text"] and layout["yaxis"]["title"]["text"].startswith("logit")


def test_header_shows_tags_and_notes_and_the_index_reaches_the_confusion_matrix(
    page: sync_api.Page, external: dict
) -> None:
    _open(page, external["id"])
    labels = page.locator("#run-labels")
    assert labels.locator(".tag").all_inner_texts() == ["baseline", "sweep-3"]
    href = labels.locator(".tag").first.get_attribute("href")
    assert href.endswith("/?tag=baseline"), f"a tag links to the runs with it: {href}"
    assert NOTES in page.locator("#run-notes").inner_text()
    index = page.locator("#chart-index")
    assert index.bounding_box()["y"] < page.locator("#chart-entropy").bounding_box()["y"], "the index is above"
    index.get_by_role("link", name="Validation confusion matrix").click()
    page.wait_for_url("**#chart-confusion")
    box = page.locator("#chart-confusion").bounding_box()
    assert 0 <= box["y"] < page.viewport_size["height"], "the confusion matrix is not brought into view"


def test_an_earlier_validation_pass_can_be_picked_for_the_confusion_matrix(page: sync_api.Page, external: dict) -> None:
    _open(page, external["id"])
    picker = page.locator(".chart-tools[data-chart='chart-confusion'] select[data-pass]")
    options = picker.locator("option").all_inner_texts()
    assert options == ["latest (step 799)", "step 399 (epoch 99)", "step 799 (epoch 199)"]

    def diagonal(chart: str) -> list[float]:
        z = page.evaluate(f"() => document.getElementById('{chart}').data[0].z")
        return [z[i][i] for i in range(CLASSES)]

    page.wait_for_function("() => document.getElementById('chart-confusion').data?.length")
    assert diagonal("chart-confusion") == [1.0, 0.0, 0.0, 0.0], "the latest pass: every sample predicted class 0"
    picker.select_option("399")
    page.wait_for_function("() => document.getElementById('chart-confusion').layout.title.text.includes('step 399')")
    assert diagonal("chart-confusion") == [1.0] * CLASSES, "the earlier pass: all on the diagonal"
    other = page.evaluate("() => document.getElementById('chart-val-classes').layout.title.text")
    assert "step 799" in other, "each chart has its own picker"
    page.locator("#chart-confusion").scroll_into_view_if_needed()
    page.screenshot(path=OUTPUT / "run_views_confusion_pass.png")
    picker.select_option("latest")
    page.wait_for_function("() => document.getElementById('chart-confusion').layout.title.text.includes('step 799')")


def test_on_a_phone_the_advice_snippet_scrolls_and_the_page_does_not(page: sync_api.Page, external: dict) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    _open(page, external["id"])
    snippet = page.locator("#warnings pre.config-snippet")
    assert "optimizer_config_with_a_rather_long_name_weight_decay" in snippet.inner_text()
    sizes = snippet.evaluate("(el) => [el.scrollWidth, el.clientWidth, getComputedStyle(el).whiteSpace]")
    assert sizes[2] == "pre" and sizes[0] > sizes[1], f"the snippet should keep its line and scroll: {sizes}"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    table = page.locator("#warnings table.config-change").bounding_box()
    assert table["x"] + table["width"] <= 390
    snippet.scroll_into_view_if_needed()
    page.screenshot(path=OUTPUT / "run_views_phone_advice.png")
    page.screenshot(path=OUTPUT / "run_views_phone.png", full_page=True)


def test_charts_follow_the_dark_colour_scheme(page: sync_api.Page, external: dict) -> None:
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 1440, "height": 900})
    _open(page, external["id"])
    layout = page.evaluate("() => document.getElementById('chart-entropy')._fullLayout")
    assert layout["paper_bgcolor"] == "#161b22" and layout["font"]["color"] == "#e3e8ef"
    assert layout["xaxis"]["gridcolor"] == "#2b3340"
    total = page.evaluate("() => document.getElementById('chart-loss').data.find((t) => t.name === 'total').line.color")
    assert total == "#e3e8ef", "the total loss, drawn in the text's colour, must show on a dark plot"
    page.screenshot(path=OUTPUT / "run_views_dark.png")
    page.emulate_media(color_scheme="light")  # and back, without a reload
    page.wait_for_function("() => document.getElementById('chart-entropy')._fullLayout.paper_bgcolor === '#ffffff'")
