"""Sweep pages: the sweeps list, the new-sweep form and the live sweep page (its live part a partial that the
page polls while the sweep runs: the same template renders the first load and every refresh)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep
from app.budgets import Limits
from app.errors import NotFound
from app.pages.rendering import CSRF_REFUSED, PAGE_METHODS, PageError, error_page, render
from app.pages.run_form import parse_id
from app.pages.sweeps_form import queue_sweep_from_form, sweep_form_context
from app.pages.sweeps_view import OBJECTIVE_LABELS, sweep_context
from app.security import CSRF_FIELD, csrf_ok
from app.storage import sweeps
from app.storage.models import MAX_ID
from app.storage.sweep_models import SweepPublic

router = APIRouter(include_in_schema=False)
SWEEPS_PER_PAGE = 50
POLL_SECONDS = 2  # how often a live sweep page asks for its live part (static/js/sweep_page.js)


def load_sweep(session: SessionDep, sweep_id: str) -> SweepPublic:
    """The sweep with its trials, or a PageError (404) naming the id, also when the id is not a number."""
    number = parse_id(sweep_id)
    try:
        if number is not None:
            return sweeps.sweep_public(session=session, sweep=sweeps.get_sweep(session=session, sweep_id=number))
    except NotFound:
        pass
    raise PageError(404, f"Sweep {sweep_id} not found", f"There is no sweep {sweep_id}; see the sweeps list.")


@router.api_route("/sweeps", methods=PAGE_METHODS, name="pages:sweeps", response_class=HTMLResponse)
def list_sweeps_page(
    request: Request, session: SessionDep, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0
) -> Response:
    page = sweeps.list_sweeps(session=session, limit=SWEEPS_PER_PAGE + 1, offset=offset)
    base = request.url_for("pages:sweeps")
    context = {
        "sweeps": page[:SWEEPS_PER_PAGE],
        "objective_labels": OBJECTIVE_LABELS,
        "offset": offset,
        "newer_url": str(base.include_query_params(offset=max(offset - SWEEPS_PER_PAGE, 0))) if offset else None,
        "older_url": str(base.include_query_params(offset=offset + SWEEPS_PER_PAGE))
        if len(page) > SWEEPS_PER_PAGE
        else None,
    }
    return render(request, "sweeps/list.html", context)


@router.api_route("/sweeps/new", methods=PAGE_METHODS, name="pages:new_sweep", response_class=HTMLResponse)
def new_sweep_page(request: Request) -> Response:
    return render(request, "sweeps/new.html", sweep_form_context())


@router.post("/sweeps/new", name="pages:create_sweep", response_class=HTMLResponse)
async def create_sweep_from_form(request: Request, session: SessionDep) -> Response:
    raw = await request.form()
    if not csrf_ok(raw.get(CSRF_FIELD), request.app.state.csrf_secret):
        return error_page(request, PageError(403, "Form expired", CSRF_REFUSED))
    form = {key: [v for v in raw.getlist(key) if isinstance(v, str)] for key in raw if key != CSRF_FIELD}
    limits = Limits.from_settings(request.app.state.settings)
    sweep_id, context = await run_in_threadpool(queue_sweep_from_form, session, form, limits)
    if sweep_id is not None:
        return RedirectResponse(request.url_for("pages:sweep", sweep_id=sweep_id), status_code=303)
    return render(request, "sweeps/new.html", context, 422)


@router.api_route("/sweeps/{sweep_id}", methods=PAGE_METHODS, name="pages:sweep", response_class=HTMLResponse)
def sweep_page(request: Request, session: SessionDep, sweep_id: str) -> Response:
    try:
        sweep = load_sweep(session, sweep_id)
    except PageError as err:
        return error_page(request, err)
    meta = {
        "live_url": str(request.url_for("pages:sweep_live", sweep_id=sweep.id)),
        "runs_url": str(request.url_for("create_run")),
        "run_url_template": str(request.url_for("pages:run", run_id="__ID__")),
        "poll_ms": POLL_SECONDS * 1000,
    }
    return render(request, "sweeps/detail.html", {**sweep_context(session, sweep), "sweep_meta": meta})


@router.api_route("/sweeps/{sweep_id}/live", methods=PAGE_METHODS, name="pages:sweep_live", response_class=HTMLResponse)
def sweep_live(request: Request, session: SessionDep, sweep_id: str) -> Response:
    try:
        sweep = load_sweep(session, sweep_id)
    except PageError as err:
        return error_page(request, err)
    return render(request, "sweeps/_live.html", sweep_context(session, sweep))
