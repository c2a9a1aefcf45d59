"""Every HTTP response says how long the app took: `Server-Timing: app;dur=<ms>`."""

import re
import time

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

DUR = re.compile(r"^app;dur=(\d+(?:\.\d+)?)$")


def _dur(headers) -> float:
    match = DUR.match(headers.get("server-timing", ""))
    assert match, f"no app duration in Server-Timing: {headers.get('server-timing')!r}"
    return float(match[1])


def test_answers_and_errors_carry_the_apps_duration(client: TestClient) -> None:
    assert _dur(client.get("/api/health").headers) >= 0
    missing = client.get("/api/runs/999999")
    assert missing.status_code == 404 and _dur(missing.headers) >= 0
    bad = client.get("/api/runs", params={"limit": "many"})
    assert bad.status_code == 422 and _dur(bad.headers) >= 0


def test_the_duration_covers_the_handlers_work_and_streams_pass_through(app: FastAPI, client: TestClient) -> None:
    @app.get("/slow-for-test")
    def slow() -> dict[str, str]:
        time.sleep(0.05)
        return {"ok": "yes"}

    @app.get("/stream-for-test")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter(["data: 1\n\n", "data: 2\n\n"]), media_type="text/event-stream")

    response = client.get("/slow-for-test")
    assert response.json() == {"ok": "yes"}
    assert 50 <= _dur(response.headers) < 5000
    streamed = client.get("/stream-for-test")
    assert streamed.text == "data: 1\n\ndata: 2\n\n" and _dur(streamed.headers) >= 0
