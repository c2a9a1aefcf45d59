"""A run page while its run waits and runs, in Chromium: the place in the queue moves up as runs ahead
end, the duration ticks while it trains, and the finished run says no warnings were raised, all without
a reload."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from chromium import MISSING, OUTPUT, sync_api
from factories import LONG

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _wait_status(base: str, run_id: int, status: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while _api(base, f"/api/runs/{run_id}")["status"] != status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status}"
        time.sleep(0.2)


def test_the_queue_place_moves_up_the_duration_ticks_and_none_raised_shows(server: str, page: sync_api.Page) -> None:
    first = _api(server, "/api/runs", {"name": "ahead 1", "config": LONG})["id"]
    _wait_status(server, first, "running")
    second = _api(server, "/api/runs", {"name": "ahead 2", "config": LONG})["id"]
    mine = _api(server, "/api/runs", {"name": "mine", "config": {"epochs": 2, "data": {"n_samples": 256}}})["id"]

    page.goto(f"/runs/{mine}")
    page.evaluate("() => { window.__sameDocument = true; }")
    waiting = page.locator("#waiting")
    assert re.match(
        r"Queued: number 2 in the queue \(1 ahead\); 1 run training now; 1 of 1 workers", waiting.inner_text()
    )
    page.screenshot(path=OUTPUT / "waiting_queued.png")

    _api(server, f"/api/runs/{first}/cancel", {})
    waiting.filter(has_text="Queued: next in the queue").wait_for(timeout=20_000)

    # the run ahead trains: its page's duration ticks each second
    assert page.context.browser is not None
    other = page.context.browser.new_page(base_url=server)
    other.goto(f"/runs/{second}")
    duration = other.locator("#run-header [data-field=duration]")
    before = duration.inner_text()
    other.wait_for_function(
        f"() => document.querySelector('#run-header [data-field=duration]').textContent.trim() !== {before!r}",
        timeout=5_000,
    )
    other.close()

    _api(server, f"/api/runs/{second}/cancel", {})
    page.locator("#run-header .status-completed").wait_for(timeout=60_000)
    page.locator("#no-warnings", has_text="No warnings: none raised.").wait_for(timeout=10_000)
    assert page.locator("#waiting").count() == 0
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    page.screenshot(path=OUTPUT / "waiting_finished.png")
