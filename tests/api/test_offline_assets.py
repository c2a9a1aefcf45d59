"""Every script and stylesheet a page loads is served by this app: the dashboard works with no internet."""

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient


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
