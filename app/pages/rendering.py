"""What every page module renders with: a template with the header's worker status, and the error page."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import OperationalError

from app.worker.hosts import WorkersOverview, header_overview
from app.worker.pool import WorkerPool

HEADER_SECONDS = 2.0  # how old the header's worker count may be
# a page answers HEAD as it answers GET (monitors and `curl -I` ask that way; uvicorn sends no body for it)
PAGE_METHODS = ["GET", "HEAD"]
CSRF_REFUSED = "This form was not sent by one of this server's pages (its CSRF token is missing or old): reload it."


class PageError(Exception):
    """Ends a page with an error page (404 for a missing run, 422 for a bad query)."""

    def __init__(self, status_code: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.title, self.message = status_code, title, message


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    context = {"workers": worker_status(request), **context}
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


def worker_status(request: Request) -> WorkersOverview | None:
    """This server's worker processes plus those other hosts report, for the header (None: none anywhere).
    Read from the database at most every HEADER_SECONDS: every page shows it, and some pages render in the
    event loop's thread (hosts report every few seconds anyway)."""
    state = request.app.state
    cached: tuple[float, WorkersOverview | None] | None = getattr(state, "workers_header", None)
    now = time.monotonic()
    if cached is not None and now - cached[0] < HEADER_SECONDS:
        return cached[1]
    pool: WorkerPool | None = getattr(state, "worker_pool", None)
    try:
        overview = header_overview(state.engine, pool, stale_after_seconds=state.settings.stale_after_seconds)
    except OperationalError:  # a busy or unreachable database: the page says what it can (an error page stays one)
        return cached[1] if cached is not None else None
    state.workers_header = (now, overview)
    return overview


def error_page(request: Request, err: PageError) -> HTMLResponse:
    return render(request, "errors/error.html", {"title": err.title, "message": err.message}, err.status_code)
