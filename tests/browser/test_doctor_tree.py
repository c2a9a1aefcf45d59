"""Doctor mode's lineage in a run page's header, in Chromium: opened on the first attempt while it trains,
the tree gains the attempt the doctor queues next and its final verdict without a reload."""

from __future__ import annotations

import json
import urllib.request

import pytest
from chromium import MISSING, OUTPUT, sync_api
from factories import EXPLODING, LONG, wait_until

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _status(base: str, run_id: int) -> str:
    with urllib.request.urlopen(f"{base}/api/runs/{run_id}", timeout=10) as response:
        return json.loads(response.read())["status"]


def test_the_lineage_grows_and_ends_on_the_first_attempts_page_without_a_reload(
    page: sync_api.Page, server: str
) -> None:
    # the server's one worker is kept busy until the page is open: the first attempt waits in the queue, and
    # everything the doctor does after it happens while the page looks on
    blocker = _post(server, "/api/runs", {"config": LONG})
    wait_until(lambda: _status(server, blocker["id"]) == "running", timeout=60, what="the blocker to run")
    # an exploding lr: each attempt warns, is stopped, and the doctor queues the advice as the next one
    body = {"preset": "collapse-prone", "config": {**EXPLODING, "epochs": 3}, "doctor": True, "doctor_max_attempts": 2}
    first = _post(server, "/api/runs", body)
    page.goto(f"/runs/{first['id']}")
    assert page.locator("#doctor").get_attribute("data-state") == "in progress"
    assert page.locator("#doctor li.attempt").count() == 1
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    _post(server, f"/api/runs/{blocker['id']}/cancel", {})

    page.wait_for_function("() => document.querySelectorAll('#doctor li.attempt').length === 2", timeout=120_000)
    second = page.locator("#doctor li.attempt").nth(1)
    assert second.get_attribute("data-run-id") != str(first["id"])
    assert "lr" in second.locator(".changed").inner_text(), "the second attempt says what the advice changed"
    assert page.locator("#doctor li.attempt").first.locator(".outcome").inner_text().startswith("Then: ")

    page.wait_for_function("() => document.getElementById('doctor').dataset.state !== 'in progress'", timeout=120_000)
    state = page.locator("#doctor").get_attribute("data-state")
    lineage = json.loads(urllib.request.urlopen(f"{server}/api/runs/{first['id']}/doctor", timeout=10).read())
    assert state == lineage["state"] and lineage["result"] in page.locator("#doctor .doctor-result").inner_text()
    assert len(lineage["attempts"]) == 2
    assert navigations == [], "the tree changed in place: the page was never loaded again"
    page.locator("#doctor").screenshot(path=OUTPUT / "doctor_tree_live.png")
