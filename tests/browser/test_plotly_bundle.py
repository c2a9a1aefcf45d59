"""The pages' Plotly build (scripts/plotly/entry.js) registers every trace type a page script asks for:
a type it lacks would draw nothing, with no error, only where that chart is used."""

from __future__ import annotations

import re

import pytest
from chromium import MISSING, ROOT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

# a trace's type in the page scripts: { type: "scatter", ... }; the same key names axis and shape types
TRACE_TYPE = re.compile(r'\btype:\s*"([a-z0-9]+)"')
NOT_TRACES = {"linear", "log", "date", "category", "multicategory", "-", "line", "rect", "circle", "path"}


def _used_trace_types() -> set[str]:
    found = set()
    for script in (ROOT / "static" / "js").glob("*.js"):
        found |= set(TRACE_TYPE.findall(script.read_text())) - NOT_TRACES
    return found


def test_every_trace_type_the_pages_draw_is_in_the_bundle(page: sync_api.Page, server: str) -> None:
    used = _used_trace_types()
    assert {"scatter", "heatmap", "bar"} <= used, used  # the scan finds them
    page.goto("/")
    page.add_script_tag(url="/static/vendor/plotly.min.js")
    registered = set(page.evaluate("() => Object.keys(Plotly.PlotSchema.get().traces)"))
    assert used <= registered, f"the page scripts draw {sorted(used - registered)}, which the bundle lacks"
    # and the build holds nothing else: each extra trace type is weight every first visit compiles
    assert registered == used, f"the bundle registers {sorted(registered - used)}, which no page draws"
