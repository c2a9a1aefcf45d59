"""Who may talk to the server: trusted hosts, same-origin writes, a token beyond loopback, safe headers.

- Loopback with no token needs nothing, except that a write must come from this server's own pages or a
  client that is not a browser: a foreign `Origin`, `Origin: null` or `Sec-Fetch-Site: cross-site` is
  refused, so a page on another site cannot cancel, delete or create runs through the user's browser.
- The `Host` header must name this server (loopback names and `trusted_hosts`), so a DNS-rebinding page
  cannot reach it under its own name.
- With a token (`COLLAPSEWATCH_TOKEN` or `--token`; required by any bind beyond loopback) every request
  but the health check, the login page and static files needs it: `Authorization: Bearer <token>` for
  the API, or the session cookie that `/login` sets (HttpOnly, SameSite=Strict) for the pages.
- A browser's write (it sends `Sec-Fetch-Site`, or the session cookie) also carries the CSRF token its
  page was given: the `X-CSRF-Token` header from the API client in static/js/api.js, a hidden
  `csrf_token` field in HTML forms (checked by the page routes). Bearer clients need none.
- Every response carries a Content-Security-Policy (scripts from this server only), `X-Frame-Options:
  DENY` and `X-Content-Type-Options: nosniff`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "collapsewatch_session"
CSRF_HEADER, CSRF_FIELD = "x-csrf-token", "csrf_token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# reachable without a token: the health check (for probes and load balancers), the login page, assets
OPEN_PATHS = ("/api/health", "/login", "/static/", "/favicon.ico")
AUTHORISED = "token_ok"  # request.state's flag: no token is configured, or the request carries it
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
# Swagger UI's page starts itself with one inline script
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """The session cookie's value: derived from the token, so changing the token logs every page out."""
    return hmac.new(token.encode(), b"collapsewatch session", hashlib.sha256).hexdigest()


def csrf_value(secret: str) -> str:
    """The CSRF token pages embed: derived from the server's secret (its token, or a random one per start)."""
    return hmac.new(secret.encode(), b"collapsewatch csrf", hashlib.sha256).hexdigest()


def csrf_ok(given: object, secret: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), csrf_value(secret).encode())


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8000
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


class SecurityMiddleware:
    """Pure ASGI, so streaming responses (the event stream) pass through untouched."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, bind_host: str, trusted_hosts: list[str], csrf_secret: str
    ) -> None:
        self.app = app
        self.token = token or None
        self.csrf_secret = csrf_secret
        names = {h.strip().lower() for h in trusted_hosts if h.strip()}
        # bound to loopback: only loopback names unless more are listed; bound wider: any name, or the list
        if is_loopback(bind_host):
            names |= LOOPBACK_NAMES
        self.trusted = None if "*" in names or (not is_loopback(bind_host) and not trusted_hosts) else names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", "/"), scope.get("method", "GET")
        host_header = headers.get("host", "")
        refusal = self._refusal(headers, host_header, path, method)
        if refusal is not None:
            status, detail, extra = refusal
            await _send_json(send, status, detail, extra, path)
            return
        # for the open paths that answer more to those with the token (GET /api/health lists the hosts)
        scope.setdefault("state", {})[AUTHORISED] = self.token is None or self._authorised(headers)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.lower() for k, _ in raw}
                for name, value in _security_headers(path):
                    if name not in present:
                        raw.append((name, value))
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refusal(
        self, headers: dict[str, str], host_header: str, path: str, method: str
    ) -> tuple[int, str, dict[str, Any]] | None:
        if self.trusted is not None and _host_name(host_header.lower()) not in self.trusted:
            return (
                400,
                f"the Host header {host_header!r} is not a name of this server (COLLAPSEWATCH_TRUSTED_HOSTS)",
                {},
            )
        if method not in SAFE_METHODS:
            origin, site = headers.get("origin"), headers.get("sec-fetch-site")
            if site == "cross-site" or (origin is not None and _origin_host(origin) != host_header.lower()):
                return 403, f"a write from another origin ({origin or site}) is refused", {}
            browser = site is not None or SESSION_COOKIE in headers.get("cookie", "")
            bearer = headers.get("authorization", "")[:7].lower() == "bearer "
            # pages check their forms' field themselves; the API wants the header from a browser
            if (
                browser
                and not bearer
                and path.startswith("/api/")
                and not csrf_ok(headers.get(CSRF_HEADER), self.csrf_secret)
            ):
                return 403, "a write from a page needs its CSRF token (the X-CSRF-Token header); reload the page", {}
        if self.token is None or path.startswith(OPEN_PATHS) or self._authorised(headers):
            return None
        if not path.startswith("/api/") and method in SAFE_METHODS:
            return 303, "log in with the server's token", {"location": f"/login?next={quote(path, safe='/')}"}
        return (
            401,
            (
                "this server needs its token: send 'Authorization: Bearer <token>' (COLLAPSEWATCH_TOKEN), "
                "or log in at /login"
            ),
            {"www-authenticate": "Bearer"},
        )

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(self.token).encode())


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    csp = DOCS_CSP if path == "/docs" else CSP
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]


async def _send_json(send: Send, status: int, detail: str, extra: dict[str, str], path: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    headers += _security_headers(path)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _origin_host(origin: str) -> str | None:
    """The host[:port] of an Origin header; None when it is no URL at all ("http://[": a foreign origin)."""
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None
