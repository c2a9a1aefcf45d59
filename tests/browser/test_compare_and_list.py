"""Compare and runs list in a real Chromium: the compare table against the API, picking any series to
overlay, search, sort, rename, tag, CSV download and delete with confirmation; a phone's width without
sideways scroll; the system's dark scheme. Screenshots go to test-output/."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator

import pytest
from chromium import MISSING, OUTPUT, sync_api
from factories import TINY

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

TERMINAL = ("completed", "failed", "cancelled", "diverged")
MEASURES = ("soft_ce", "accuracy", "ece", "kl")


def _create(api: sync_api.APIRequestContext, name: str, preset: str, **config: object) -> int:
    response = api.post("/api/runs", data={"name": name, "preset": preset, "config": {**TINY, "epochs": 3, **config}})
    assert response.status == 201, response.text()
    return response.json()["id"]


def _wait_finished(api: sync_api.APIRequestContext, run_ids: list[int], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(api.get(f"/api/runs/{i}").json()["status"] in TERMINAL for i in run_ids):
            return
        time.sleep(0.3)
    raise AssertionError(f"runs {run_ids} did not finish within {seconds} s")


@pytest.fixture(scope="module")
def runs(server: str) -> Iterator[dict[str, int]]:
    """Three tiny finished runs: two to compare, one to delete."""
    with sync_api.sync_playwright() as p:
        api = p.request.new_context(base_url=server)
        ids = {
            "steady": _create(api, "steady smoothing", "fixed"),
            "sharp": _create(api, "sharp lr", "collapse-prone", lr=0.5),
            "doomed": _create(api, "doomed", "fixed"),
        }
        _wait_finished(api, list(ids.values()))
        api.dispose()
    yield ids


def _drawn(page: sync_api.Page, chart: str, traces: int) -> None:
    page.wait_for_function(f"() => document.getElementById('{chart}')?.data?.length === {traces}", timeout=30_000)


def _no_sideways_scroll(page: sync_api.Page) -> tuple[int, int]:
    return page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")


# the outermost elements that reach past the window's right edge: what to fix when a page scrolls sideways
_OVERFLOWING = """() => {
  const past = (e) => e.getBoundingClientRect().right > innerWidth + 1;
  return [...document.querySelectorAll('body *')].filter((e) => past(e) && !past(e.parentElement)).slice(0, 8)
    .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`);
}"""


def test_compare_table_matches_the_evaluations_and_any_series_can_be_overlaid(
    page: sync_api.Page, runs: dict[str, int]
) -> None:
    a, b = runs["steady"], runs["sharp"]
    page.goto(f"/compare?ids={a},{b}")
    _drawn(page, "compare-logits", 4)  # largest and smallest logit per run
    _drawn(page, "compare-grad", 2)
    assert page.evaluate("() => document.getElementById('compare-grad').layout.yaxis.type") == "log"

    last = {i: page.request.get(f"/api/runs/{i}/evals").json()[-1]["metrics"] for i in (a, b)}
    for run_id, metrics in last.items():
        row = page.locator(f"#compare-table tbody tr[data-run-id='{run_id}']")
        for key in MEASURES:
            shown = row.locator(f"td[data-measure='{key}']").get_attribute("data-value")
            assert float(shown) == metrics[key], (run_id, key)
        gap = float(row.locator("td[data-measure='entropy_gap']").get_attribute("data-value"))
        assert math.isclose(gap, abs(metrics["entropy_mean"] - metrics["target_entropy_mean"]))
    # the best of each column is marked, on the run the API says is best
    for key, pick in (("soft_ce", min), ("accuracy", max), ("kl", min)):
        values = {i: last[i][key] for i in (a, b)}
        if values[a] != values[b]:
            winner = pick(values, key=values.get)
            marked = page.locator(f"#compare-table td.best[data-measure='{key}']")
            assert marked.count() == 1 and marked.locator("xpath=..").get_attribute("data-run-id") == str(winner)
    assert page.locator("#compare-verdict").inner_text().strip()
    page.screenshot(path=OUTPUT / "compare_table.png", full_page=True)

    # any series: a batch statistic, then an evaluation metric; the choice is kept in the URL
    stats = {i: page.request.get(f"/api/runs/{i}/stats?columns=grad_norm,lr").json() for i in (a, b)}
    page.select_option("#compare-series-select", "batch:lr")
    page.wait_for_function("() => document.getElementById('compare-series').layout.title.text.startsWith('lr ')")
    ys = page.evaluate("() => document.getElementById('compare-series').data.map((t) => t.y)")
    assert ys == [stats[a]["columns"]["lr"], stats[b]["columns"]["lr"]]
    page.select_option("#compare-series-select", "eval:kl")
    page.wait_for_function("() => document.getElementById('compare-series').layout.title.text.includes('kl')")
    ys = page.evaluate("() => document.getElementById('compare-series').data.map((t) => t.y)")
    evals = {i: page.request.get(f"/api/runs/{i}/evals").json() for i in (a, b)}
    assert ys == [[e["metrics"]["kl"] for e in evals[i]] for i in (a, b)]
    assert "series=eval%3Akl" in page.url or "series=eval:kl" in page.url
    page.reload()
    _drawn(page, "compare-series", 2)
    assert page.input_value("#compare-series-select") == "eval:kl", "a reload keeps the chosen series"


def _row_names(page: sync_api.Page) -> list[str]:
    return page.eval_on_selector_all("#runs-body tr[data-run-id]", "rows => rows.map((r) => r.dataset.name)")


def test_runs_list_searches_sorts_renames_tags_exports_and_deletes(page: sync_api.Page, runs: dict[str, int]) -> None:
    page.goto("/")
    page.fill("#runs-search", "SHARP")
    page.press("#runs-search", "Enter")
    page.wait_for_url(re.compile(r"[?&]q=SHARP"))
    assert _row_names(page) == ["sharp lr"]
    assert "1 run match" in page.inner_text("#runs-count")
    page.get_by_role("link", name="Clear filters").click()
    page.wait_for_url(re.compile(r"/$"))

    # sorted by the last evaluation's loss, server-side, and the other way on a second click
    page.locator("#runs-table thead a[data-sort='val_loss']").click()
    page.wait_for_url(re.compile(r"sort=val_loss&order=asc"))
    api_order = [r["name"] for r in page.request.get("/api/runs?sort=val_loss&order=asc").json()["items"]]
    assert _row_names(page) == api_order
    assert page.get_attribute("#runs-table th[aria-sort]", "aria-sort") == "ascending"
    page.locator("#runs-table thead a[data-sort='val_loss']").click()
    page.wait_for_url(re.compile(r"sort=val_loss&order=desc"))
    assert _row_names(page) == [
        r["name"] for r in page.request.get("/api/runs?sort=val_loss&order=desc").json()["items"]
    ]

    # rename and tag through the edit dialog (a PATCH with the page's CSRF token)
    steady = runs["steady"]
    row = page.locator(f"#runs-body tr[data-run-id='{steady}']")
    row.get_by_role("button", name=re.compile("Edit run")).click()
    page.locator("#edit-dialog[open]").wait_for()  # opens once the run's stored labels are read
    assert page.input_value("#edit-name") == "steady smoothing"
    page.fill("#edit-name", "steady, renamed")
    page.fill("#edit-tags", "baseline, t4")
    page.fill("#edit-notes", "the one to beat")
    page.screenshot(path=OUTPUT / "runs_list_edit_dialog.png")
    page.click("#edit-save")
    page.locator(f"#runs-body tr[data-run-id='{steady}'][data-name='steady, renamed']").wait_for()
    stored = page.request.get(f"/api/runs/{steady}").json()
    assert (stored["name"], stored["tags"], stored["notes"]) == (
        "steady, renamed",
        ["baseline", "t4"],
        "the one to beat",
    )
    page.locator(f"#runs-body tr[data-run-id='{steady}'] a.tag", has_text="baseline").click()
    page.wait_for_url(re.compile(r"tag=baseline"))
    assert _row_names(page) == ["steady, renamed"]

    # the statistics as a CSV download
    with page.expect_download() as download:
        page.locator(f"#runs-body tr[data-run-id='{steady}'] a.csv").click()
    lines = open(download.value.path()).read().splitlines()  # noqa: SIM115 (a temporary file Playwright owns)
    assert lines[0].startswith("step,epoch,loss,") and len(lines) == 1 + stored["steps"]

    # delete asks first: cancel keeps the run, confirm removes it
    page.goto("/")
    doomed = runs["doomed"]
    page.locator(f"#runs-body tr[data-run-id='{doomed}'] button.delete").click()
    assert "doomed" in page.inner_text("#delete-message")
    page.locator("#delete-dialog").get_by_role("button", name="Cancel").click()
    assert page.locator("#delete-dialog").is_hidden()
    assert page.request.get(f"/api/runs/{doomed}").status == 200
    page.locator(f"#runs-body tr[data-run-id='{doomed}'] button.delete").click()
    page.click("#delete-confirm")
    page.locator(f"#runs-body tr[data-run-id='{doomed}']").wait_for(state="detached")
    assert page.request.get(f"/api/runs/{doomed}").status == 404


def test_a_phone_never_scrolls_sideways_on_list_compare_and_run_pages(
    page: sync_api.Page, runs: dict[str, int]
) -> None:
    a, b = runs["steady"], runs["sharp"]
    page.set_viewport_size({"width": 390, "height": 844})
    for name, url, chart in (
        ("list", "/", None),
        ("compare", f"/compare?ids={a},{b}", "compare-ece"),
        ("run", f"/runs/{a}", "chart-entropy"),
    ):
        page.goto(url)
        if chart:
            page.wait_for_function(f"() => document.getElementById('{chart}')?.data !== undefined", timeout=30_000)
        width, inner = _no_sideways_scroll(page)
        culprits = page.evaluate(_OVERFLOWING)
        page.screenshot(path=OUTPUT / f"phone_{name}.png", full_page=True)
        assert width <= inner, f"{url} scrolls sideways at 390 px: {width} > {inner}, past the edge: {culprits}"


def _luminance(page: sync_api.Page, selector: str, prop: str = "backgroundColor") -> float:
    rgb = page.evaluate(f"() => getComputedStyle(document.querySelector('{selector}')).{prop}")
    r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_dark_scheme_follows_the_system_on_every_page_charts_too(page: sync_api.Page, runs: dict[str, int]) -> None:
    a, b = runs["steady"], runs["sharp"]
    page.emulate_media(color_scheme="dark")
    for name, url in (("runs_list", "/"), ("compare", f"/compare?ids={a},{b}"), ("run_page", f"/runs/{a}"),
                      ("new_run", "/runs/new")):  # fmt: skip
        page.goto(url)
        if name == "compare":
            _drawn(page, "compare-ece", 2)
            paper = page.evaluate("() => document.getElementById('compare-ece').layout.paper_bgcolor")
            assert paper == "#161b22", "the compare charts are drawn dark"
        if name == "run_page":
            page.wait_for_function("() => document.getElementById('chart-entropy')?.data !== undefined", timeout=30_000)
        page.wait_for_timeout(300)
        page.screenshot(path=OUTPUT / f"dark_{name}.png", full_page=True)
        assert _luminance(page, "body") < 0.15, f"{url}: the page is not dark"
        assert _luminance(page, "h1", "color") > 0.7, f"{url}: the heading is not light on dark"
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    page.screenshot(path=OUTPUT / "dark_phone_runs_list.png", full_page=True)
