"""static/js/api.js's followRun in a real Chromium against a scripted event stream: when the stream drops,
it reconnects after the last event id it received (`last_event_id`), so the page gets each event once."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

PAGE = """<!doctype html><script type="module">
import { followRun } from "/static/js/api.js";
window.got = [];
const keep = (kind) => (data) => window.got.push([kind, data]);
followRun("/events", 9, { stats: keep("stats"), eval: keep("eval"), warning: keep("warning"), status: keep("status") });
</script>"""


def _event(event_id: str, kind: str, data: dict) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


# what the scripted server answers, in turn: the first stream drops after two events
STREAMS = [
    _event("19.0.0", "stats", {"steps": list(range(10, 20)), "last_step": 19}) + _event("19.4.0", "eval", {"step": 19}),
    _event("29.4.0", "stats", {"steps": list(range(20, 30)), "last_step": 29})
    + _event("29.4.0.completed.30", "status", {"status": "completed", "steps": 30, "error": None}),
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    asked: list[dict[str, list[str]]]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            self._send(200, "text/html", PAGE.encode())
        elif url.path == "/events":
            self.asked.append(parse_qs(url.query))
            body = STREAMS[len(self.asked) - 1] if len(self.asked) <= len(STREAMS) else b""
            self._send(200, "text/event-stream", body)  # then closes: the stream drops
        else:
            super().do_GET()  # /static/js/*.js from the repository

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    asked: list[dict[str, list[str]]] = []
    handler = type("Handler", (_Handler,), {"asked": asked})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(ROOT)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_dropped_stream_is_reopened_after_the_last_event_id(scripted: tuple[str, list]) -> None:
    base, asked = scripted
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"{base}/")
        tab.wait_for_function("() => window.got?.some(([kind]) => kind === 'status')", timeout=15_000)
        got = tab.evaluate("() => window.got")
        tab.wait_for_timeout(2500)  # a terminal status stops it: no third stream after the reconnect delay
        browser.close()
    assert not errors, errors
    assert asked[0] == {"since_step": ["9"]}, "the first stream starts after the page's own history"
    assert asked[1] == {"last_event_id": ["19.4.0"]}, "the reconnect resumes after the last event received"
    assert len(asked) == 2
    assert [kind for kind, _ in got] == ["stats", "eval", "stats", "status"]
    assert [s for kind, data in got if kind == "stats" for s in data["steps"]] == list(range(10, 30))
