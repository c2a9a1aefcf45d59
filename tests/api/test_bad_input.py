"""Hostile input is a 4xx that names the field, never a 500: huge ids, unicode digits, NUL bytes,
wrong JSON types and unknown keys, on SQLite and on PostgreSQL."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
import uvicorn
from factories import LOCAL, add_run, wait_until
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app.core.config import Settings
from app.main import create_app
from app.security import CSP
from app.storage import crud
from app.storage.models import MAX_ID, MAX_STEP, RunWarning

ID_ROUTES = [
    ("get", "/api/runs/{}"),
    ("get", "/api/runs/{}/stats"),
    ("get", "/api/runs/{}/evals"),
    ("get", "/api/runs/{}/warnings"),
    ("post", "/api/runs/{}/cancel"),
    ("delete", "/api/runs/{}"),
    ("get", "/api/datasets/{}"),
]
# past SQLite's 64-bit integers, past PostgreSQL's 32-bit INTEGER keys, below the first id
OUT_OF_RANGE_IDS = [2**63, 2**64, 2**31, 0, -1, -(2**63) - 1]


def _client(url: str, data_dir: Path) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=url, data_dir=data_dir, workers=0))
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(f"sqlite:///{tmp_path / 'bad.db'}", tmp_path / "data")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The same checks on both databases: their integer and text limits differ."""
    if request.param == "sqlite":
        yield from _client(f"sqlite:///{tmp_path / 'bad.db'}", tmp_path / "data")
    else:  # skips when PostgreSQL is not reachable
        yield from _client(request.getfixturevalue("pg_url"), tmp_path / "data")


def _runs(client: TestClient) -> int:
    return client.get("/api/runs").json()["total"]


# --- ids, steps and offsets ---------------------------------------------------------------------------
@pytest.mark.parametrize("method,route", ID_ROUTES)
def test_an_id_no_table_can_hold_is_a_422_with_the_range(any_db: TestClient, method: str, route: str) -> None:
    for value in OUT_OF_RANGE_IDS:
        response = any_db.request(method, route.format(value))
        assert response.status_code == 422, (value, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"][0] == "path" and error["loc"][1].endswith("_id")
        assert str(MAX_ID) in error["msg"] or "greater than or equal to 1" in error["msg"]
    # the bound itself is an id like any other
    response = any_db.request(method, route.format(MAX_ID))
    assert response.status_code == 404, response.text
    assert response.json()["detail"].endswith(f"{MAX_ID} not found")


def test_out_of_range_steps_and_offsets_are_422s_and_the_bounds_themselves_work(any_db: TestClient) -> None:
    client = any_db
    run_id = add_run(client.app.state.engine)
    for url, name in [
        (f"/api/runs/{run_id}/stats?since_step={2**63}", "since_step"),
        (f"/api/runs/{run_id}/stats?since_step=-2", "since_step"),
        (f"/api/runs?offset={2**63}", "offset"),
        (f"/api/runs?offset={2**31}", "offset"),
    ]:
        response = client.get(url)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", name]
    stats = client.get(f"/api/runs/{run_id}/stats?since_step={MAX_STEP}")
    assert stats.status_code == 200 and stats.json()["steps"] == []
    page = client.get(f"/api/runs?offset={MAX_ID}")
    assert page.status_code == 200 and page.json() == {"items": [], "total": 1}


@pytest.mark.parametrize("field", ["parent_id", "dataset_id"])
def test_an_out_of_range_id_in_a_body_is_a_422_naming_it(any_db: TestClient, field: str) -> None:
    for value in (2**63, 2**31, 0):
        response = any_db.post("/api/runs", json={field: value})
        assert response.status_code == 422, (value, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", field]
    assert _runs(any_db) == 0


def test_an_out_of_range_warning_id_is_a_422(any_db: TestClient) -> None:
    run_id = add_run(any_db.app.state.engine)
    for value in (2**63, 2**31):
        response = any_db.post(f"/api/runs/{run_id}/apply-advice", json={"warning_id": value})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "warning_id"]


def test_the_event_stream_of_an_id_no_table_can_hold_is_a_404(any_db: TestClient) -> None:
    # the stream route declares a plain int: crud.get_run refuses the id before it reaches a query
    for value in (2**63, 2**31):
        response = any_db.get(f"/api/runs/{value}/events")
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == f"Run {value} not found"


# --- bodies ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [5, [], {}, None, True])
def test_a_preset_that_is_not_a_string_is_a_422_naming_it(client: TestClient, preset: object) -> None:
    response = client.post("/api/runs", json={"config": {"preset": preset}})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "config", "preset"] and "must be a preset name" in error["msg"]
    assert _runs(client) == 0


def test_a_run_name_with_a_control_character_is_a_422(any_db: TestClient) -> None:
    for name in ["a\x00b", "line\nbreak", "tab\there", "bell\x07", "del\x7f", "c1\x85"]:
        response = any_db.post("/api/runs", json={"name": name, "config": {"epochs": 1}})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "name"] and "control character" in error["msg"]
    assert _runs(any_db) == 0


def test_a_run_name_over_200_characters_is_a_422_and_200_are_kept(any_db: TestClient) -> None:
    response = any_db.post("/api/runs", json={"name": "n" * 201, "config": {"epochs": 1}})
    assert response.status_code == 422, response.text[:300]
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "name"] and "at most 200 characters" in error["msg"]
    assert _runs(any_db) == 0
    kept = any_db.post("/api/runs", json={"name": "é" * 200, "config": {"epochs": 1}})  # characters, not bytes
    assert kept.status_code == 201 and kept.json()["name"] == "é" * 200


def _post_run_form(client: TestClient, **fields: str):
    token = parse_html(client.get("/runs/new").text).find("input", name="csrf_token").attrs["value"]
    form = {"preset": "fixed", "epochs": "1", **fields, "csrf_token": token}
    return client.post("/runs/new", data=form, follow_redirects=False)


def test_the_run_form_with_a_name_over_200_characters_is_the_form_again_naming_the_limit(client: TestClient) -> None:
    response = _post_run_form(client, name="n" * 250, epochs="0")
    assert response.status_code == 422, response.text[:300]
    doc = parse_html(response.text)
    errors = [li.text for li in doc.by_id("form-errors").find_all("li")]
    assert any(e.startswith("name :") and "at most 200 characters; this one has 250" in e for e in errors), errors
    assert any(e.startswith("epochs :") for e in errors), errors  # shown beside the config's own errors
    assert doc.by_id("form-errors").find("a", href="#name") is not None
    assert doc.by_id("name").attrs["value"] == "n" * 250  # the text typed is kept, to be shortened
    assert _runs(client) == 0
    assert _post_run_form(client, name="n" * 200).status_code == 303
    assert _runs(client) == 1


def test_a_name_with_accents_emoji_or_non_latin_script_is_kept(any_db: TestClient) -> None:
    name = "café 🚀 学習 — ünïcode"
    response = any_db.post("/api/runs", json={"name": name, "config": {"epochs": 1}})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "a\\ud800b"}',  # a lone surrogate: valid JSON, no UTF-8 form
        b'{"config": {"\\udfff": 1}}',
        b'{"dataset_id": "\\ud800"}',
        b'"\\ud800"',
    ],
)
def test_a_lone_surrogate_in_a_body_is_a_422_that_echoes_it_escaped(client: TestClient, body: bytes) -> None:
    response = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "\\\\ud" in response.text or "\\\\udfff" in response.text
    assert _runs(client) == 0


def test_an_upload_with_a_control_character_in_a_name_is_a_422(any_db: TestClient) -> None:
    for form, loc in [({"name": "x\x00y"}, "name"), ({"label_column": "label\x00"}, "label_column")]:
        response = any_db.post("/api/datasets", files={"file": ("t.csv", "a,label\n1,0\n2,1\n")}, data=form)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", loc]
    assert any_db.get("/api/datasets").json() == []


def test_an_upload_whose_file_name_holds_nul_is_a_422(any_db: TestClient) -> None:
    # by hand: httpx would percent-encode the NUL in the file name, as browsers do
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="t\x00.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\na,label\n1,0\n2,1\n\r\n--B--\r\n"
    )
    response = any_db.post("/api/datasets", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "file"] and "the file's name" in error["msg"]


def test_an_unknown_top_level_key_is_a_422_that_suggests_the_known_one(client: TestClient) -> None:
    response = client.post("/api/runs", json={"confg": {"epochs": 1}})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "confg"]
    assert "did you mean 'config'?" in error["msg"] and "known fields: name, preset, config" in error["msg"]
    assert _runs(client) == 0


def test_unknown_and_invalid_keys_are_reported_together(client: TestClient) -> None:
    response = client.post("/api/runs", json={"nmae": "x", "dataset_id": "seven"})
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e for e in response.json()["detail"]}
    assert set(errors) == {("body", "nmae"), ("body", "dataset_id")}
    assert "did you mean 'name'?" in errors["body", "nmae"]["msg"]


def test_apply_advice_refuses_unknown_keys(client: TestClient) -> None:
    run_id = add_run(client.app.state.engine)
    response = client.post(f"/api/runs/{run_id}/apply-advice", json={"warning_id": 1, "force": True})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "force"]


# --- config fields checked at submit ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**32, 2**63])
def test_a_data_seed_out_of_range_is_a_422_with_the_range(client: TestClient, seed: int) -> None:
    response = client.post("/api/runs", json={"config": {"data": {"seed": seed}}})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "config", "data", "seed"] and "[0, 4294967295]" in error["msg"]


@pytest.mark.parametrize("device", ["cuda:²", "cuda:", "cuda:-1", "gpu", "cuda:0 "])
def test_a_malformed_device_is_a_422(client: TestClient, device: str) -> None:
    response = client.post("/api/runs", json={"config": {"device": device}})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "config", "device"]


def test_a_cuda_device_this_machine_lacks_is_a_422_that_says_how_many_it_has(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert client.post("/api/runs", json={"config": {"device": "cuda:1", "epochs": 1}}).status_code == 201
    response = client.post("/api/runs", json={"config": {"device": "cuda:99"}})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "config", "device"]
    assert "2 CUDA device(s), cuda:0 to cuda:1" in error["msg"]


def test_cuda_without_cuda_is_a_422_that_offers_cpu_and_auto(client: TestClient, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:0"):
        response = client.post("/api/runs", json={"config": {"device": device}})
        assert response.status_code == 422, response.text
        assert "no CUDA device" in response.json()["detail"][0]["msg"]
    assert client.post("/api/runs", json={"config": {"device": "auto", "epochs": 1}}).status_code == 201


# --- pages ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["/runs/²", "/runs/²/header", "/runs/²/warnings", "/runs/１", f"/runs/{2**63}", f"/runs/{'9' * 5000}",
     f"/runs/new?parent={2**63}", f"/runs/new?parent={2**31}"],
)  # fmt: skip
def test_a_page_for_an_id_that_is_no_run_number_is_its_404_page(any_db: TestClient, url: str) -> None:
    response = any_db.get(url)
    assert response.status_code == 404, response.text[:300]
    assert "not found" in parse_html(response.text).find("h1").text


@pytest.mark.parametrize("url", ["/compare?ids=1,²", f"/compare?ids=1,{2**63}", "/compare?ids=1,٣", f"/?offset={2**63}",
                                 f"/partials/runs?offset={2**31}"])  # fmt: skip
def test_a_page_with_a_bad_number_in_its_query_is_its_422_page(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("url", "words"),
    [("/sweeps?offset=abc", "offset: Input should be a valid integer"), ("/?offset=x", "offset: Input should be"),
     ("/sweeps?offset=-1", "offset: Input should be greater than or equal to 0")],
)  # fmt: skip
def test_a_page_whose_query_fails_validation_is_an_error_page_naming_the_parameter(
    client: TestClient, url: str, words: str
) -> None:
    response = client.get(url)
    assert response.status_code == 422 and response.headers["content-type"].startswith("text/html"), response.text
    page = parse_html(response.text)
    assert page.find("h1").text == "Bad address" and words in page.find("div", id="not-found").text


def test_an_unknown_page_or_method_is_an_error_page_while_the_api_answers_json(client: TestClient) -> None:
    missing = client.get("/runz")
    assert missing.status_code == 404 and "There is no page at /runz." in missing.text
    assert client.post("/sweeps/new/x").status_code in (404, 405)
    wrong = client.delete("/runs/new")
    assert wrong.status_code == 405 and parse_html(wrong.text).find("h1").text == "Method not allowed"
    assert "GET" in wrong.headers["allow"], "a 405 names the methods the page takes"
    assert client.get("/api/runz").json() == {"detail": "Not Found"}
    api = client.get("/api/runs?offset=abc")
    assert api.status_code == 422 and api.json()["detail"][0]["loc"] == ["query", "offset"]


@pytest.mark.parametrize("field", ["dataset_id", "parent_id"])
@pytest.mark.parametrize("value", ["²", "１", str(2**63), str(2**31), "9" * 5000])
def test_the_run_form_with_a_bad_id_never_fails(client: TestClient, field: str, value: str) -> None:
    token = parse_html(client.get("/runs/new").text).find("input", name="csrf_token").attrs["value"]
    form = {"preset": "fixed", "data_source": "dataset" if field == "dataset_id" else "synthetic", field: value}
    response = client.post("/runs/new", data={**form, "epochs": "1", "csrf_token": token}, follow_redirects=False)
    if field == "dataset_id":  # no such dataset: the form again, with the error beside the dataset picker
        assert response.status_code == 422, response.text[:300]
        assert parse_html(response.text).by_id("dataset_id-error") is not None
    else:  # not a run number, so not a parent: the run is queued on its own
        assert response.status_code == 303, response.text[:300]


def test_the_warning_lookup_of_apply_advice_takes_a_real_warning(any_db: TestClient) -> None:
    # the bounds must not refuse a real id: the smallest ids work end to end
    run_id = add_run(any_db.app.state.engine)
    with Session(any_db.app.state.engine) as session:
        warning = RunWarning(
            run_id=run_id, kind="one_hot", severity="critical", step=3, message="m", advice={"message": "m",
            "overrides": {"temperature": 5.0}},
        )  # fmt: skip
        session.add(warning)
        session.commit()
        warning_id = warning.id
    response = any_db.post(f"/api/runs/{run_id}/apply-advice", json={"warning_id": warning_id})
    assert response.status_code == 201, response.text


# --- what a 500 does to its connection ------------------------------------------------------------------
def test_an_unexpected_error_leaves_the_keep_alive_connection_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(**_: object) -> None:
        raise RuntimeError("an unexpected failure, the kind the generic handler exists for")

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'ka.db'}", data_dir=tmp_path, workers=0))
    monkeypatch.setattr(crud, "get_run", fail)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/runs/1")
        first = connection.getresponse()
        assert first.status == 500 and json.loads(first.read())["error_id"]
        assert first.getheader("content-security-policy") == CSP and first.getheader("x-frame-options") == "DENY"
        connection.request("GET", "/api/health")  # the same keep-alive connection
        assert connection.getresponse().status == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_unexpected_error_is_answered_not_raised_and_logged_with_its_traceback(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("disk on fire")

    # raise_server_exceptions=True: an exception that still reached the server would fail this request
    with TestClient(app, base_url=LOCAL) as test_client, caplog.at_level(logging.ERROR, logger="app.main"):
        response = test_client.get("/api/boom")
    assert response.status_code == 500 and response.headers["content-security-policy"] == CSP
    error_id = response.json()["error_id"]
    assert "disk on fire" not in response.text
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert "GET /api/boom" in record.getMessage() and record.exc_info is not None
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text


def test_an_error_after_the_response_started_is_not_answered_twice(app: FastAPI) -> None:
    async def half() -> AsyncIterator[bytes]:
        yield b"the first part"
        raise RuntimeError("mid-stream")

    @app.get("/api/half")
    def stream_half() -> StreamingResponse:
        return StreamingResponse(half(), media_type="text/plain")

    # the status line is already out: no 500 can follow, so the error ends the response (and connection)
    with TestClient(app, base_url=LOCAL) as test_client, pytest.raises(RuntimeError, match="mid-stream"):
        test_client.get("/api/half")


def test_an_error_page_stays_itself_while_the_database_is_unreachable(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.pages.rendering as rendering

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("SELECT ...", {}, Exception("unable to open database file"))

    monkeypatch.setattr(rendering, "header_overview", unreachable)
    client.app.state.workers_header = None  # nothing cached: the header has to read
    missing = client.get("/runz")
    assert missing.status_code == 404 and "There is no page at /runz." in missing.text, missing.text[:300]
    assert "SELECT" not in missing.text and "unable to open" not in missing.text


def test_pages_answer_head_as_they_answer_get_and_the_api_keeps_its_methods(client: TestClient) -> None:
    run_id = client.post("/api/runs", json={"config": {"epochs": 1}}).json()["id"]
    for url in ["/", "/runs/new", f"/runs/{run_id}", "/sweeps", "/static/vendor/plotly.min.js"]:
        head, get = client.head(url), client.get(url)
        assert head.status_code == get.status_code == 200, url
        assert head.headers["content-type"] == get.headers["content-type"], url
    assert client.head("/runs/999999").status_code == 404
    assert client.head("/api/runs").status_code == 405, "the API's documented methods are its methods"
