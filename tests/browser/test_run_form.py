"""The new-run form in Chromium: edits against the preset are marked and counted, a preset switch asks
before it replaces them, Enter in a text field does not queue a run, the transport settings are folded
under Advanced, and a Queue run button sits at the top."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from chromium import MISSING, OUTPUT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)


def _runs(base: str) -> int:
    with urllib.request.urlopen(f"{base}/api/runs", timeout=10) as response:
        return json.loads(response.read())["total"]


def test_edits_are_marked_a_preset_switch_asks_and_enter_does_not_submit(server: str, page: sync_api.Page) -> None:
    page.goto("/runs/new")
    assert page.locator("#preset-diff-count").inner_text() == ""
    assert page.locator(".field.differs").count() == 0

    page.fill("#label_smoothing", "0.2")
    page.fill("#epochs", "3")
    assert page.locator(".field.differs").count() == 2
    assert page.locator("#preset-diff-count").inner_text() == "2 fields differ from fixed"
    note = page.locator(".field.differs .differs-note").first.inner_text()
    assert re.fullmatch(r"changed from fixed's \S+", note), note

    # Enter in a text field queues nothing
    before = _runs(server)
    page.locator("#name").fill("typed, then Enter")
    page.locator("#name").press("Enter")
    page.wait_for_timeout(500)
    assert page.url.endswith("/runs/new") and _runs(server) == before

    # a preset switch asks first; declining keeps every edit and the preset
    messages: list[str] = []
    page.once("dialog", lambda d: (messages.append(d.message), d.dismiss()))
    page.select_option("#preset", "collapse-prone")
    assert messages and messages[0].startswith("Switch to collapse-prone? It replaces your 2 edits (")
    assert "label_smoothing" in messages[0] and "epochs" in messages[0]
    assert page.input_value("#preset") == "fixed" and page.input_value("#label_smoothing") == "0.2"
    # accepting replaces them with the new preset's values
    page.once("dialog", lambda d: d.accept())
    page.select_option("#preset", "collapse-prone")
    assert page.input_value("#label_smoothing") == "0.0" and page.locator(".field.differs").count() == 0

    # the recording settings are folded away; the top button queues the run
    advanced = page.locator("details.advanced")
    assert advanced.count() == 1 and advanced.get_attribute("open") is None
    assert not page.locator("#flush_batches").is_visible()
    top = page.locator("#queue-top")
    assert top.bounding_box()["y"] < 200, "the submit button is at the top of the page"
    page.screenshot(path=OUTPUT / "run_form.png")
    page.fill("#epochs", "1")
    top.click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    assert _runs(server) == before + 1
