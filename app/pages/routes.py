"""HTML pages: runs list, new-run form, run page, compare (sweeps: app/pages/sweeps.py); Jinja2 shells whose
live data comes from the API.

The partial routes (rows, header, warnings) render the same templates as the first page load, so a
live refresh and a reload can never show different things.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep
from app.budgets import Limits
from app.pages.compare import compare_runs
from app.pages.config_form import config_differences, display_value, flatten, form_values
from app.pages.doctor_view import doctor_tree
from app.pages.lineage import advice_states, lineage
from app.pages.rendering import CSRF_REFUSED, PAGE_METHODS, PageError, error_page, render, worker_status
from app.pages.run_data import applicable_fields, run_dataset
from app.pages.run_form import find_run, form_context, parse_id, preset_values, queue_from_form
from app.pages.runs_list import ListQueryError, runs_context
from app.pages.sweeps import router as sweep_pages
from app.pages.waiting import waiting_state
from app.security import CSRF_FIELD, SESSION_COOKIE, csrf_ok, session_value
from app.storage import crud
from app.storage.models import MAX_ID, RunPublic
from app.storage.sweep_links import trial_link
from trainer import BATCH_COLUMNS, EVAL_METRICS, preset_names
from trainer.detector_rules import LOGIT_CRIT, LOGIT_WARN

router = APIRouter(include_in_schema=False)
router.include_router(sweep_pages)

STATS_POINTS = 2000  # server-side downsampling target for a chart's first load
# live points a run page's charts take before they are drawn afresh from the downsampled history, so a
# page left open on a fast run stays light (static/js/run_page.js)
LIVE_POINTS_LIMIT = 10_000
# one colour per run on the compare page (Plotly's default sequence, readable on white)
RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def load_run(session: SessionDep, run_id: int | str) -> RunPublic:
    """The run, or a PageError (404) naming the id, also when the id is not a number."""
    number = parse_id(str(run_id))
    run = find_run(session, number) if number is not None else None
    if run is None:
        raise PageError(404, f"Run {run_id} not found", f"There is no run {run_id}; it may have been deleted.")
    return run


# --- runs list ------------------------------------------------------------------------------------
def _runs_context(request: Request, session: SessionDep, query: dict[str, Any]) -> dict[str, Any]:
    try:
        return runs_context(request, session, **query)
    except ListQueryError as err:
        raise PageError(422, "Bad list query", str(err)) from err


def _list_query(
    status: str | None = None,
    q: str | None = None,
    tag: str | None = None,
    sort: str = "created",
    order: str = "desc",
    offset: int = 0,
) -> dict[str, Any]:
    return {"status": status, "q": q, "tag": tag, "sort": sort, "order": order, "offset": max(offset, 0)}


ListQuery = Annotated[dict[str, Any], Depends(_list_query)]


@router.api_route("/", methods=PAGE_METHODS, name="pages:runs", response_class=HTMLResponse)
def list_runs_page(request: Request, session: SessionDep, query: ListQuery) -> Response:
    try:
        return render(request, "runs/list.html", _runs_context(request, session, query))
    except PageError as err:
        return error_page(request, err)


@router.api_route("/partials/runs", methods=PAGE_METHODS, name="pages:runs_rows", response_class=HTMLResponse)
def list_runs_rows(request: Request, session: SessionDep, query: ListQuery) -> Response:
    try:
        return render(request, "runs/_rows.html", _runs_context(request, session, query))
    except PageError as err:
        return error_page(request, err)


# --- new run --------------------------------------------------------------------------------------
@router.api_route("/runs/new", methods=PAGE_METHODS, name="pages:new_run", response_class=HTMLResponse)
def new_run_page(
    request: Request, session: SessionDep, preset: str | None = None, parent: int | None = None
) -> Response:
    try:
        parent_run = load_run(session, parent) if parent is not None else None
    except PageError as err:
        return error_page(request, err)
    chosen = preset or (parent_run.preset if parent_run else "fixed")
    if chosen not in preset_names():
        msg = f"unknown preset {chosen!r}; known presets: {', '.join(preset_names())}"
        return render(
            request,
            "runs/new.html",
            form_context(session, preset="fixed", values=preset_values("fixed"), errors={"preset": [msg]}),
            422,
        )
    values = form_values(parent_run.config) if parent_run and not preset else preset_values(chosen)
    context = form_context(session, preset=chosen, values=values, parent=parent_run)
    if parent_run and parent_run.dataset_id is not None and not preset:
        context.update(data_source="dataset", dataset_id=parent_run.dataset_id)
    return render(request, "runs/new.html", context)


@router.post("/runs/new", name="pages:create_run", response_class=HTMLResponse)
async def create_run_from_form(request: Request, session: SessionDep) -> Response:
    raw = await request.form()
    if not csrf_ok(raw.get(CSRF_FIELD), request.app.state.csrf_secret):
        return error_page(request, PageError(403, "Form expired", CSRF_REFUSED))
    form = {key: [v for v in raw.getlist(key) if isinstance(v, str) and key != CSRF_FIELD] for key in raw}
    limits = Limits.from_settings(request.app.state.settings)
    run_id, context = await run_in_threadpool(queue_from_form, session, form, limits)
    if run_id is not None:
        return RedirectResponse(request.url_for("pages:run", run_id=run_id), status_code=303)
    return render(request, "runs/new.html", context, 422)


# --- run page -------------------------------------------------------------------------------------
def _table_value(value: Any) -> str:
    return "none" if value is None else display_value(value)


def _stats_url(request: Request, run_id: int) -> str:
    return f"{request.url_for('read_run_stats', run_id=run_id)}?max_points={STATS_POINTS}"


def _batch_size(config: dict[str, Any]) -> int | None:
    value = config.get("batch_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _chart_meta(request: Request, run: RunPublic) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "status": run.status,
        "num_classes": run.num_classes,
        "min_entropy": run.config.get("min_entropy"),
        "max_grad_norm": run.config.get("max_grad_norm"),
        # what the charts draw exploding_logits's limits from: |z - the sample's mean z| / T
        "logit_warn": LOGIT_WARN,
        "logit_crit": LOGIT_CRIT,
        "temperature": run.config.get("temperature"),
        "deploy_temperature": run.config.get("deploy_temperature", 1.0),
        "epochs": run.config.get("epochs"),
        "steps_per_epoch": (run.info or {}).get("steps_per_epoch"),
        # the wall-time axis: seconds per batch are batch_size / samples_per_s (null: no such axis)
        "batch_size": _batch_size(run.config),
        "stats_url": _stats_url(request, run.id),
        "live_points_limit": LIVE_POINTS_LIMIT,
        "evals_url": str(request.url_for("list_run_evals", run_id=run.id)),
        "events_url": str(request.url_for("stream_run_events", run_id=run.id)),
        "header_partial_url": str(request.url_for("pages:run_header", run_id=run.id)),
        "warnings_partial_url": str(request.url_for("pages:run_warnings", run_id=run.id)),
        "run_url_template": str(request.url_for("pages:run", run_id="__ID__")),
    }


@router.api_route("/runs/{run_id}", methods=PAGE_METHODS, name="pages:run", response_class=HTMLResponse)
def run_page(request: Request, session: SessionDep, run_id: str) -> Response:
    try:
        run = load_run(session, run_id)
    except PageError as err:
        return error_page(request, err)
    parent = find_run(session, run.parent_id) if run.parent_id is not None else None
    diff = config_differences([parent.config, run.config]) if parent else []
    context = {
        "run": run,
        "waiting": waiting_state(session, run, worker_status(request)),
        "lineage": lineage(session, run),
        "warnings": (warnings := crud.list_warnings(session=session, run_id=run.id)),
        "advice_states": advice_states(session, run, warnings),
        "dataset": run_dataset(session, run),
        "config_rows": [(k, _table_value(v)) for k, v in applicable_fields(flatten(run.config)).items()],
        "parent": parent,
        "parent_diff": [(k, [_table_value(v) for v in vs]) for k, vs in diff],
        "chart_meta": _chart_meta(request, run),
        "trial": trial_link(session=session, run_id=run.id),
        "doctor": doctor_tree(session, run),
    }
    return render(request, "runs/detail.html", context)


@router.api_route("/runs/{run_id}/header", methods=PAGE_METHODS, name="pages:run_header", response_class=HTMLResponse)
def run_header(request: Request, session: SessionDep, run_id: str) -> Response:
    try:
        run = load_run(session, run_id)
        context = {"run": run, "waiting": waiting_state(session, run, worker_status(request))}
        context |= {"lineage": lineage(session, run), "dataset": run_dataset(session, run)}
        context |= {"trial": trial_link(session=session, run_id=run.id), "doctor": doctor_tree(session, run)}
        return render(request, "runs/_header.html", context)
    except PageError as err:
        return error_page(request, err)


@router.api_route(
    "/runs/{run_id}/warnings", methods=PAGE_METHODS, name="pages:run_warnings", response_class=HTMLResponse
)
def run_warnings(request: Request, session: SessionDep, run_id: str) -> Response:
    try:
        run = load_run(session, run_id)
    except PageError as err:
        return error_page(request, err)
    warnings = crud.list_warnings(session=session, run_id=run.id)
    context = {"run": run, "warnings": warnings, "advice_states": advice_states(session, run, warnings)}
    return render(request, "runs/_warnings.html", context)


# --- compare --------------------------------------------------------------------------------------
def _parse_ids(ids: str) -> list[int]:
    parts = [p.strip() for p in ids.split(",") if p.strip()]
    numbers = [parse_id(p) for p in parts]
    bad = [p for p, number in zip(parts, numbers, strict=True) if number is None]
    if bad:
        message = f"ids must be run numbers (1 to {MAX_ID:,}) separated by commas, got {bad[0]!r}."
        raise PageError(422, "Bad run ids", message)
    unique = list(dict.fromkeys(n for n in numbers if n is not None))
    if len(unique) < 2:
        raise PageError(422, "Pick two or more runs", "Compare needs at least two run ids, e.g. /compare?ids=1,2.")
    return unique


@router.api_route("/compare", methods=PAGE_METHODS, name="pages:compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep, ids: str = "") -> Response:
    try:
        runs = [load_run(session, run_id) for run_id in _parse_ids(ids)]
    except PageError as err:
        return error_page(request, err)
    colors = {run.id: RUN_COLORS[i % len(RUN_COLORS)] for i, run in enumerate(runs)}
    diff = config_differences([run.config for run in runs])
    meta = {
        "runs": [
            {
                "id": r.id,
                "name": r.name,
                "color": colors[r.id],
                "stats_url": _stats_url(request, r.id),
                "evals_url": str(request.url_for("list_run_evals", run_id=r.id)),
            }
            for r in runs
        ],
        "batch_columns": list(BATCH_COLUMNS),  # every recorded series can be overlaid
        "eval_metrics": list(EVAL_METRICS),
    }
    warnings = {r.id: crud.list_warnings(session=session, run_id=r.id) for r in runs}
    context = {
        "runs": runs,
        "colors": colors,
        "differences": [(k, [_table_value(v) for v in vs]) for k, vs in diff],
        "comparison": compare_runs(runs, warnings),
        "compare_meta": meta,
    }
    return render(request, "compare/index.html", context)


# --- login (only when the server has a token: see app/security.py) -----------------------------------
def _safe_next(value: object) -> str:
    """A local path to return to; anything else (another host, a scheme) goes to the runs list."""
    text = str(value or "/")
    return text if text.startswith("/") and not text.startswith("//") and "\\" not in text else "/"


@router.api_route("/login", methods=PAGE_METHODS, response_class=HTMLResponse, name="login")
def login_page(request: Request, next: str = "/") -> Response:
    if not request.app.state.settings.token:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", name="login_submit")
async def login_submit(request: Request) -> Response:
    token = request.app.state.settings.token
    form = await request.form()
    target = _safe_next(form.get("next"))
    if not token:
        return RedirectResponse(target, status_code=303)
    given = str(form.get("token") or "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return render(request, "login.html", {"next": target, "error": "That is not this server's token."}, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
    return response
