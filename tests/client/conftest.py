"""The client's tests talk to a real uvicorn server on a free port (tests/factories.py serve_app)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import serve_app
from fastapi import FastAPI


@pytest.fixture
def server_url(app: FastAPI) -> Iterator[str]:
    server, thread, url = serve_app(app)
    yield url
    server.should_exit = True
    thread.join(10)
