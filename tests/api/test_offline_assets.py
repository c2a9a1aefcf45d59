"""Every script and stylesheet a page loads is served by this app: the dashboard works with no internet."""

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from factories import add_run, make_chunk, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from app.assets import PARTIAL_NAME, PARTIAL_PATH, plotly_bundle
from app.storage.models import Run


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("rel") == "stylesheet" and a.get("href"):
            self.urls.append(a["href"])


@pytest.mark.parametrize("path", ["/", "/runs/new", "/docs"])
def test_page_assets_are_local_and_served(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    parser = _Assets()
    parser.feed(page.text)
    assert parser.urls, "the page loads scripts or styles"
    for url in parser.urls:
        parts = urlsplit(url)
        assert parts.netloc in ("", "127.0.0.1"), f"{path} loads {url} from another host"
        asset = client.get(parts.path)
        assert asset.status_code == 200 and len(asset.content) > 100, url


# --- page weight: compression and caching ----------------------------------------------------------
def _src(html: str, needle: str) -> str:
    parser = _Assets()
    parser.feed(html)
    return next(url for url in parser.urls if needle in url)


def test_plotly_is_the_partial_build_in_the_repository() -> None:
    bundle = plotly_bundle()
    assert PARTIAL_PATH.is_file(), "static/vendor/plotly-collapsewatch.min.js is part of the repository"
    assert bundle.name == PARTIAL_NAME and bundle.body == PARTIAL_PATH.read_bytes()
    assert len(bundle.body) < 1_300_000  # plotly.js's cartesian bundle is 1.5 MB, the full one 4.8 MB
    assert bundle.body.startswith(b"/* plotly.js 4.1.1, Copyright (c) Plotly, Inc., MIT license"), "version, license"
    licenses = PARTIAL_PATH.with_name("plotly-collapsewatch.LICENSES.txt").read_text()
    assert "plotly.js 4.1.1 (MIT)" in licenses and "@plotly/d3 3.8.2 (BSD-3-Clause)" in licenses


def test_plotly_is_gzipped_and_cached_as_immutable_under_its_versioned_url(client: TestClient, engine: Engine) -> None:
    bundle = plotly_bundle()
    src = _src(client.get(f"/runs/{add_run(engine)}").text, "plotly")
    assert src == f"/static/vendor/plotly.min.js?v={bundle.digest}"
    response = client.get(src, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(bundle.gzipped) < len(bundle.body) / 2.5
    assert response.content == bundle.body  # httpx decodes it: the same bytes
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = response.headers["etag"]
    assert client.get(src, headers={"If-None-Match": etag}).status_code == 304
    # an old or missing version is not cached blindly: it revalidates
    assert client.get("/static/vendor/plotly.min.js?v=0123456789abcdef").headers["cache-control"] == "no-cache"
    plain = client.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == bundle.body


def test_pages_link_versioned_assets_that_are_immutable_and_modules_that_revalidate(client: TestClient) -> None:
    page = client.get("/runs/new")
    css = _src(page.text, "app.css")
    assert "?v=" in css
    assert client.get(css).headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = urlsplit(css).path + "?v=0000000000000000"
    assert client.get(stale).headers["cache-control"] == "no-cache"
    module = client.get("/static/js/api.js")  # imported by relative URL from other modules: no ?v
    assert module.status_code == 200 and module.headers["cache-control"] == "no-cache"
    assert client.get("/static/js/api.js", headers={"If-None-Match": module.headers["etag"]}).status_code == 304


def test_json_and_pages_are_compressed_and_streams_are_not(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    write_stats(engine, run_id, [make_chunk(0, 400)])
    stats = client.get(f"/api/runs/{run_id}/stats", headers={"Accept-Encoding": "gzip"})
    assert stats.status_code == 200 and stats.headers["content-encoding"] == "gzip"
    assert int(stats.headers["content-length"]) < len(stats.content) / 2
    page = client.get(f"/runs/{run_id}", headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip"
    with Session(engine) as session:  # a finished run: its stream sends the backlog and ends
        run = session.get(Run, run_id)
        assert run is not None
        run.status = "completed"
        session.add(run)
        session.commit()
    with client.stream("GET", f"/api/runs/{run_id}/events", headers={"Accept-Encoding": "gzip"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers  # each event must reach the browser when sent
