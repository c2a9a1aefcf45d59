"""Static assets: the Plotly bundle, versioned URLs with immutable caching, compressed responses.

Plotly is the page's heaviest part: on a first visit, compiling and running it is the longest step before
the first chart. The pages are served plotly.js's core with only the traces they draw (scatter, bar,
heatmap), built from the npm registry by scripts/plotly/build.sh at pinned versions and committed as
static/vendor/plotly-collapsewatch.min.js (1.18 MB, 0.41 MB gzipped), with the licenses of what it bundles
beside it. In a cold Chromium it loaded, compiled and ran in 258 ms against 642 ms for plotly.js's 1.5 MB
cartesian bundle (its first plot took 178 against 126 ms); set-up needs no npm. Should the file be absent,
the full bundle of the installed plotly package is served (4.8 MB). Nothing is fetched at run time.

Files referenced with `asset_url` carry `?v=<digest>` and are cached for a year as immutable; any
other static file (the ES modules, which import each other by plain relative URLs) revalidates with its
ETag, so a deploy is seen at once. The Plotly bundle is gzipped once and kept in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
# plotly.js's core with the traces the pages draw (scripts/plotly/build.sh writes it)
PARTIAL_PATH = STATIC / "vendor" / "plotly-collapsewatch.min.js"
PARTIAL_NAME = "partial (scatter, bar, heatmap)"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # may be stored, but checked against its ETag before each use
PLOTLY_URL = "/static/vendor/plotly.min.js"


def full_plotly_path() -> Path:
    """plotly.min.js from the installed plotly package (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


@dataclass(frozen=True)
class Bundle:
    name: str  # "partial (scatter, bar, heatmap)" or "full (plotly package)"
    body: bytes
    gzipped: bytes
    digest: str  # of the uncompressed body: the ?v= of its URL and its ETag

    def respond(self, request: Request) -> Response:
        headers = {"ETag": f'"{self.digest}"', "Vary": "Accept-Encoding"}
        versioned = request.query_params.get("v") == self.digest
        headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(self.gzipped, media_type="text/javascript", headers=headers)
        return Response(self.body, media_type="text/javascript", headers=headers)


@cache
def plotly_bundle() -> Bundle:
    if PARTIAL_PATH.is_file():
        body, name = PARTIAL_PATH.read_bytes(), PARTIAL_NAME
    else:  # a checkout without it: the package's full bundle draws the same charts
        body, name = full_plotly_path().read_bytes(), "full (plotly package)"
    digest = hashlib.sha256(body).hexdigest()[:16]
    return Bundle(name, body, gzip.compress(body, compresslevel=9, mtime=0), digest)


@cache
def _static_digest(path: str) -> str:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise ValueError(f"no static file {path!r}")
    return hashlib.sha256(target.read_bytes()).hexdigest()[:16]


def asset_url(path: str) -> str:
    """The URL of a static file with its content's digest: cached as immutable, changed with the file."""
    if path == "vendor/plotly.min.js":
        return f"{PLOTLY_URL}?v={plotly_bundle().digest}"
    return f"/static/{path}?v={_static_digest(path)}"


class StaticCacheMiddleware:
    """Cache-Control for /static/: immutable for a URL with ?v= (asset_url checked nothing but the digest
    it wrote, so a stale ?v gets revalidation, not a year), revalidate with the ETag otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/static/") or path == PLOTLY_URL:
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        version = next((p[2:] for p in query.split("&") if p.startswith("v=")), None)
        relative = path.removeprefix("/static/")
        try:
            current = version is not None and version == _static_digest(relative)
        except ValueError:
            current = False
        policy = IMMUTABLE if current else REVALIDATE

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 304):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": [*headers, (b"cache-control", policy.encode())]}
            await send(message)

        await self.app(scope, receive, with_policy)
