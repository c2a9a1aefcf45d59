"""`create_app(settings)`: the FastAPI app with its engine, API, pages, static files and error handlers.

Nothing is built at import time; `uvicorn --factory app.main:create_app` or `collapsewatch serve`.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.main import api_router
from app.assets import PLOTLY_URL, StaticCacheMiddleware, asset_url, plotly_bundle
from app.budgets import BodyLimitMiddleware, TooLarge, shutdown_reader
from app.core.config import Settings
from app.errors import Conflict, InputError, NotFound
from app.pages import routes as pages
from app.pages.rendering import PageError, error_page
from app.security import SecurityMiddleware, csrf_value
from app.storage.engine import init_db, make_engine
from app.storage.feed import FeedHub
from app.sweeps.task import drive_periodically
from app.timing import ServerTimingMiddleware
from app.worker.claim import confirm_window, reap_stale_runs
from app.worker.doctor import treat_runs
from app.worker.pool import WorkerPool

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


async def _reap_periodically(app: FastAPI) -> None:
    """The server also notices lost workers, so a run is marked failed even when no worker is left."""
    settings: Settings = app.state.settings
    while True:
        try:
            await anyio.to_thread.run_sync(
                lambda: reap_stale_runs(
                    app.state.engine,
                    stale_after_seconds=settings.stale_after_seconds,
                    confirm_seconds=confirm_window(settings.heartbeat_seconds),
                )
            )
        except Exception:
            log.exception("reaping stale runs failed")
        await anyio.sleep(settings.reap_interval_seconds)


async def _treat_periodically(app: FastAPI) -> None:
    """Doctor mode (app/worker/doctor.py): stop warned runs and queue their next attempt, once a second."""
    while True:
        try:
            await anyio.to_thread.run_sync(lambda: treat_runs(app.state.engine))
        except Exception:
            log.exception("the doctor's pass failed")
        await anyio.sleep(app.state.settings.doctor_interval_seconds)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Reap lost runs while serving; start and stop the worker pool that `collapsewatch serve` attached
    (stopping it here, not after uvicorn returns, also covers SIGTERM, which uvicorn re-raises)."""
    pool: WorkerPool | None = getattr(app.state, "worker_pool", None)
    if pool is not None:
        pool.start()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_reap_periodically, app)
            tasks.start_soon(_treat_periodically, app)
            tasks.start_soon(drive_periodically, app.state.engine, app.state.settings)  # sweeps (app/sweeps/)
            yield
            tasks.cancel_scope.cancel()
    finally:
        if pool is not None:
            await anyio.to_thread.run_sync(pool.stop)
        shutdown_reader()
        app.state.engine.dispose()


def _is_page(request: Request) -> bool:
    """A request for a page (anything outside /api and /static): its errors are error pages, not JSON."""
    path = request.url.path
    return not (path == "/api" or path.startswith(("/api/", "/static/")))


def _query_problems(exc: RequestValidationError) -> str:
    """A page's bad query as one sentence: 'offset: Input should be a valid integer (got "abc")'."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path"))
        got = f" (got {json.dumps(e['input'])[:80]})" if isinstance(e.get("input"), str | int | float) else ""
        parts.append(f"{where}: {e.get('msg', 'invalid')}{got}" if where else f"{e.get('msg', 'invalid')}{got}")
    return "; ".join(parts) or "The address holds a value this page cannot read."


def _add_error_handlers(app: FastAPI) -> None:
    # the error page's header may read the database: in a thread, not the event loop's
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_page(request):
            return await run_in_threadpool(error_page, request, PageError(422, "Bad address", _query_problems(exc)))
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_page(request) and exc.status_code in (404, 405):
            title, message = (
                ("Page not found", f"There is no page at {request.url.path}.")
                if exc.status_code == 404
                else ("Method not allowed", f"{request.method} is not how {request.url.path} is used.")
            )
            page = await run_in_threadpool(error_page, request, PageError(exc.status_code, title, message))
            page.headers.update(exc.headers or {})  # a 405's Allow
            return page
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(TooLarge)
    async def too_large(_request: Request, exc: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": f"{exc} (COLLAPSEWATCH_MAX_UPLOAD_MB)"}, status_code=413)

    @app.exception_handler(InputError)
    async def invalid_input(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(OperationalError)
    async def database_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # a held lock past the busy timeout, a full disk, a lost connection: the request can be
        # retried, and the body says so without the statement or its parameters
        error_id = uuid.uuid4().hex[:12]
        log.error("database error %s on %s %s: %s", error_id, request.method, request.url.path, exc.orig)
        return JSONResponse(
            {"detail": f"the database is busy or unavailable (error {error_id}); retry shortly", "error_id": error_id},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    # what fails outside InternalErrorMiddleware (in SecurityMiddleware itself) gets the same answer from
    # Starlette's ServerErrorMiddleware, which then re-raises, so the server closes that connection
    app.add_exception_handler(Exception, internal_error)


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # a JSON body a client can show, with an id to find the details in the log: never the
    # exception's text, which can hold SQL, parameters or storage paths
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error {error_id}: the server log has the details", "error_id": error_id},
        status_code=500,
    )


class InternalErrorMiddleware:
    """Answers an unexpected exception with `internal_error`'s 500 and ends the request there. Starlette's
    own ServerErrorMiddleware re-raises after answering, and uvicorn then closes the connection, so a
    client's next request on that keep-alive connection would be reset. Pure ASGI: streams pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # part of a response is out: only closing the connection tells the client
                raise
            await internal_error(Request(scope), exc)(scope, receive, send)


def _add_local_docs(app: FastAPI) -> None:
    """/docs with Swagger UI from the installed swagger-ui-bundle package: no CDN, works offline."""
    app.mount("/static/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="collapsewatch API",
            swagger_js_url="/static/vendor/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger/favicon-32x32.png",
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    init_db(engine)
    app = FastAPI(
        title="collapsewatch",
        summary="Train soft-target classifiers and watch, batch by batch, whether they collapse.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs loads Swagger UI from a CDN: served locally below
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.run_feeds = FeedHub(engine)  # event streams of one run share its database poll
    app.state.templates = Jinja2Templates(directory=ROOT / "templates")
    _add_error_handlers(app)
    app.add_middleware(ServerTimingMiddleware)
    app.add_middleware(StaticCacheMiddleware)
    # pages, JSON and scripts gzipped (a run's statistics shrink ~2x); event streams are left alone. Level 1:
    # on 0.9 MB of statistics 16 ms for 440 kB, where level 6 takes 90 ms for 396 kB (bench.long_run saw
    # the first stats request go from 96 to 210 ms at level 6)
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    app.add_middleware(BodyLimitMiddleware, upload_mb=settings.max_upload_mb)
    # the CSRF secret: the token when there is one (stable across restarts), else fresh per start
    csrf_secret = settings.token or secrets.token_hex(32)
    app.state.csrf_secret = csrf_secret
    app.state.templates.env.globals["csrf_token"] = csrf_value(csrf_secret)
    app.state.templates.env.globals["asset_url"] = asset_url
    # inside SecurityMiddleware, so its 500 carries the security headers too
    app.add_middleware(InternalErrorMiddleware)
    # outermost: a refused request costs nothing further
    app.add_middleware(
        SecurityMiddleware,
        token=settings.token,
        bind_host=settings.host,
        trusted_hosts=settings.trusted_hosts,
        csrf_secret=csrf_secret,
    )
    app.include_router(api_router, prefix="/api")

    @app.api_route(PLOTLY_URL, methods=["GET", "HEAD"], include_in_schema=False)
    def plotly_js(request: Request) -> Response:
        return plotly_bundle().respond(request)

    _add_local_docs(app)
    app.include_router(pages.router)
    # mounted last: a mount matches its whole prefix, so the vendor route above must come first
    app.mount("/static", StaticFiles(directory=ROOT / "static", check_dir=False), name="static")
    return app
