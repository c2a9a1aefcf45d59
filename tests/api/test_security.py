"""Who may talk to the server: same-origin writes, trusted Host names, the token, safe headers, the bind check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import LOCAL
from fastapi.testclient import TestClient

from app.cli import main
from app.core.config import Settings, UnsafeBind, check_bind
from app.main import create_app

TOKEN = "s3cret-token-for-tests"
RUN = {"config": {"epochs": 1}}


@pytest.fixture
def guarded(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"token": TOKEN})), base_url=LOCAL) as client:
        yield client


def test_a_page_on_another_origin_cannot_write(client: TestClient) -> None:
    # the probe: a page elsewhere cancelled a running run, uploaded a dataset and created a run via the form
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://127.0.0.1:9999"}, {"Origin": "http://["}):  # fmt: skip
        for method, url, kwargs in (
            ("POST", "/api/runs", {"json": RUN}),
            ("POST", "/runs/new", {"data": {"preset": "fixed"}}),
            ("POST", "/api/runs/1/cancel", {}),
            ("DELETE", "/api/runs/1", {}),
        ):
            response = client.request(method, url, headers=headers, **kwargs)
            assert response.status_code == 403, (headers, url, response.text)
            assert "another origin" in response.json()["detail"]
    assert client.get("/api/runs").json()["total"] == 0
    # the server's own pages (same origin) and non-browser clients (no Origin) may write
    assert client.post("/api/runs", json=RUN, headers={"Origin": LOCAL}).status_code == 201
    assert client.post("/api/runs", json=RUN).status_code == 201


def _csrf(client: TestClient) -> str:
    return client.get("/").text.split('<meta name="csrf-token" content="')[1].split('"')[0]


def test_a_browser_write_needs_the_csrf_token_of_its_page(client: TestClient) -> None:
    browser = {"Sec-Fetch-Site": "same-origin", "Origin": LOCAL}
    refused = client.post("/api/runs", json=RUN, headers=browser)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    wrong = client.post("/api/runs", json=RUN, headers={**browser, "X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    assert client.post("/api/runs", json=RUN, headers={**browser, "X-CSRF-Token": _csrf(client)}).status_code == 201
    # the HTML form: its hidden field, checked by the page route
    form = {"preset": "fixed", "epochs": "1"}
    page = client.post("/runs/new", data=form, headers=browser)
    assert page.status_code == 403 and "CSRF token" in page.text
    ok = client.post("/runs/new", data={**form, "csrf_token": _csrf(client)}, headers=browser, follow_redirects=False)
    assert ok.status_code == 303
    assert client.get("/api/runs").json()["total"] == 2


def test_only_this_servers_names_are_answered(client: TestClient) -> None:
    # DNS rebinding: a page under its own name that resolves to 127.0.0.1
    response = client.get("/api/runs", headers={"Host": "rebind.evil.example"})
    assert response.status_code == 400 and "Host header" in response.json()["detail"]
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host


def test_trusted_hosts_extend_the_names(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"trusted_hosts": ["cw.internal"]}))
    with TestClient(app, base_url="http://cw.internal") as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/health", headers={"Host": "other.internal"}).status_code == 400


def test_every_response_carries_the_safe_headers(client: TestClient) -> None:
    for url in ("/", "/api/runs", "/api/runs/99", "/static/css/app.css", "/docs"):
        response = client.get(url)
        assert response.headers["x-frame-options"] == "DENY", url
        assert response.headers["x-content-type-options"] == "nosniff", url
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, url
        assert ("'unsafe-inline'" in csp.split("script-src")[1].split(";")[0]) == (url == "/docs"), url


def test_with_a_token_the_api_needs_it(guarded: TestClient) -> None:
    response = guarded.get("/api/runs")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]
    assert guarded.post("/api/runs", json=RUN).status_code == 401
    assert guarded.get("/api/runs", headers={"Authorization": "Bearer wrong-token-of-length"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.post("/api/runs", json=RUN, headers=auth).status_code == 201
    assert guarded.get("/api/runs", headers=auth).json()["total"] == 1
    assert guarded.get("/api/health").status_code == 200  # probes need no token


def test_with_a_token_pages_log_in_once(guarded: TestClient) -> None:
    response = guarded.get("/runs/new", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/runs/new"
    assert "Token" in guarded.get("/login").text
    wrong = guarded.post("/login", data={"token": "nope", "next": "/runs/new"}, follow_redirects=False)
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.text
    ok = guarded.post("/login", data={"token": TOKEN, "next": "/runs/new"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/runs/new"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN not in ok.headers["set-cookie"]
    assert guarded.get("/runs/new").status_code == 200  # the client keeps the cookie
    assert guarded.get("/api/runs").status_code == 200
    # a next that leaves the server goes to the runs list instead
    away = guarded.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert away.headers["location"] == "/"


def test_a_bind_beyond_loopback_needs_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnsafeBind, match="COLLAPSEWATCH_TOKEN"):
        check_bind(Settings(host="0.0.0.0"))
    check_bind(Settings(host="0.0.0.0", token=TOKEN))
    check_bind(Settings(host="127.0.0.1"))
    args = ["serve", "--host", "0.0.0.0", "--port", "1", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"]
    assert main(args) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists(), "nothing started"
