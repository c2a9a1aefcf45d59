"""HTML pages through TestClient, read as parsed HTML: what a user sees on each page and form."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import LOCAL
from fastapi.testclient import TestClient
from html_dom import Element, parse_html
from sqlmodel import Session

from app.core.config import Settings
from app.main import create_app
from app.pages.config_fields import ALL_FIELDS
from app.storage.models import Run, RunWarning
from trainer import preset, preset_names

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'pages.db'}", workers=0, data_dir=tmp_path / "data")
    with TestClient(create_app(settings), base_url=LOCAL) as test_client:
        yield test_client


def make_run(client: TestClient, **body: object) -> dict:
    response = client.post("/api/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def submit_form(client: TestClient, form: dict[str, str], **kwargs: object):
    """POST the run form as a browser does: with the CSRF token of the page it came from."""
    token = parse_html(client.get("/runs/new").text).find("input", name="csrf_token").attrs["value"]
    return client.post("/runs/new", data={**form, "csrf_token": token}, **kwargs)


def page(client: TestClient, url: str, status: int = 200) -> Element:
    response = client.get(url)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    return parse_html(response.text)


def json_block(doc: Element, element_id: str) -> dict:
    block = doc.by_id(element_id)
    assert block.tag == "script" and block.attrs["type"] == "application/json"
    return json.loads("".join(c for c in block.children if isinstance(c, str)))


def add_warning(client: TestClient, run_id: int) -> int:
    with Session(client.app.state.engine) as session:
        warning = RunWarning(
            run_id=run_id,
            kind="one_hot",
            severity="critical",
            step=40,
            message="44% of predictions are near one-hot while 1% of targets are",
            evidence={"onehot_frac": 0.44, "target_onehot_frac": 0.01},
            advice={"message": "Turn label smoothing on: 0 -> 0.15", "overrides": {"label_smoothing": 0.123}},
        )
        session.add(warning)
        session.commit()
        return warning.id


def test_runs_list_shows_each_run_with_its_status_and_parent(client: TestClient) -> None:
    parent = make_run(client, name="base", preset="collapse-prone")
    child = make_run(client, name="smoothed", preset="collapse-prone", parent_id=parent["id"])
    doc = page(client, "/")
    rows = {row.attrs["data-run-id"]: row for row in doc.by_id("runs-body").find_all("tr")}
    assert set(rows) == {str(parent["id"]), str(child["id"])}
    child_row = rows[str(child["id"])]
    links = [a.attrs["href"] for a in child_row.find_all("a")]
    assert any(href.endswith(f"/runs/{child['id']}") for href in links)
    assert any(href.endswith(f"/runs/{parent['id']}") for href in links), "the parent link is missing"
    assert child_row.find(class_="badge").text == "queued"
    assert doc.find("a", class_="primary").attrs["href"].endswith("/runs/new")
    assert doc.by_id("compare-button").attrs["data-compare-url"].endswith("/compare")


def test_live_rows_partial_renders_the_same_rows(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        make_run(client, name=name)
    full = [r.attrs["data-run-id"] for r in page(client, "/").by_id("runs-body").find_all("tr")]
    partial = [r.attrs["data-run-id"] for r in page(client, "/partials/runs").by_id("runs-body").find_all("tr")]
    assert partial == full and len(full) == 3


def test_new_run_form_explains_every_field_and_carries_preset_values(client: TestClient) -> None:
    doc = page(client, "/runs/new")
    form = doc.by_id("run-form")
    for field in ALL_FIELDS:
        assert form.find_all(name=field.name), f"no input for {field.name}"
        assert field.allowed in doc.by_id(f"{field.name}-help").text, f"{field.name} does not show its range"
    assert [o.attrs["value"] for o in doc.by_id("preset").find_all("option")] == preset_names()
    prone = json_block(doc, "preset-values")["collapse-prone"]
    expected = preset("collapse-prone")
    assert float(prone["label_smoothing"]) == expected.label_smoothing
    assert float(prone["temperature"]) == expected.temperature
    assert prone["max_grad_norm"] == "", "clipping off must show as an empty field"


def test_submitted_form_queues_the_run_and_redirects_to_it(client: TestClient) -> None:
    form = {
        "name": "from the form",
        "preset": "collapse-prone",
        "data_source": "synthetic",
        "temperature": "2.75",
        "epochs": "2",
        "data.n_samples": "200",
    }
    response = submit_form(client, form, follow_redirects=False)
    assert response.status_code == 303
    run_id = int(response.headers["location"].rstrip("/").rsplit("/", 1)[1])
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["name"] == "from the form" and run["preset"] == "collapse-prone"
    assert run["config"]["temperature"] == 2.75 and run["config"]["epochs"] == 2
    assert run["config"]["data"]["n_samples"] == 200
    assert run["config"]["label_smoothing"] == preset("collapse-prone").label_smoothing


def test_invalid_form_shows_each_error_beside_its_field_and_queues_nothing(client: TestClient) -> None:
    form = {"preset": "fixed", "data_source": "synthetic", "temperature": "0", "data.n_samples": "many"}
    response = submit_form(client, form)
    assert response.status_code == 422
    doc = parse_html(response.text)
    assert "[0.05, 100" in doc.by_id("temperature-error").text
    assert "integer" in doc.by_id("data.n_samples-error").text
    marked = [f.find("input").attrs["name"] for f in doc.find_all("div", class_="has-error") if f.find("input")]
    assert set(marked) == {"temperature", "data.n_samples"}
    assert doc.by_id("temperature").attrs["value"] == "0", "the typed value must stay in the field"
    assert client.get("/api/runs").json()["total"] == 0


def test_min_entropy_is_checked_against_the_class_count(client: TestClient) -> None:
    form = {"preset": "fixed", "data_source": "synthetic", "data.num_classes": "4", "min_entropy": "1.5"}
    doc = parse_html(submit_form(client, form).text)
    assert "ln(4)" in doc.by_id("min_entropy-error").text
    assert client.get("/api/runs").json()["total"] == 0


def test_uploaded_dataset_can_be_picked_in_the_form(client: TestClient) -> None:
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 3}" for i in range(60))
    upload = client.post(
        "/api/datasets", files={"file": ("small.csv", f"a,b,label\n{rows}\n")}, data={"label_column": "label"}
    )
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    options = page(client, "/runs/new").by_id("dataset_id").find_all("option")
    assert [o.attrs["value"] for o in options] == [str(dataset["id"])]
    form = {"preset": "fixed", "data_source": "dataset", "dataset_id": str(dataset["id"]), "min_entropy": "0.5"}
    response = submit_form(client, form, follow_redirects=False)
    assert response.status_code == 303, response.text
    run = client.get(response.headers["location"].replace("/runs/", "/api/runs/")).json()
    assert run["config"]["data"]["kind"] == "table" and run["config"]["data"]["num_classes"] == 3


def test_run_page_has_header_charts_config_and_no_inline_script(client: TestClient) -> None:
    run = make_run(client, name="watched", preset="collapse-prone", config={"temperature": 3.25, "max_grad_norm": None})
    doc = page(client, f"/runs/{run['id']}")
    header = doc.by_id("run-header")
    assert f"Run {run['id']}" in header.find("h1").text and "watched" in header.find("h1").text
    assert header.find(class_="badge").text == "queued"
    assert header.find(id="cancel-button").attrs["data-cancel-url"].endswith(f"/api/runs/{run['id']}/cancel")
    charts = {el.attrs["id"] for el in doc.by_id("charts").find_all("div", class_="chart")}
    assert len(charts) == 15
    index = {a.attrs["href"] for a in doc.by_id("chart-index").find_all("a")}
    assert index == {f"#{c}" for c in charts}, "the chart index links every chart"
    meta = json_block(doc, "chart-meta")
    assert meta["batch_size"] == run["config"]["batch_size"], "the wall-time axis needs the batch size"
    assert meta["min_entropy"] == preset("collapse-prone").min_entropy and meta["max_grad_norm"] is None
    assert "max_points=2000" in meta["stats_url"] and meta["events_url"].endswith(f"/api/runs/{run['id']}/events")
    config = {r.find("th").text: r.find("td").text for r in doc.by_id("config-table").find("tbody").find_all("tr")}
    assert config["temperature"] == "3.25" and config["max_grad_norm"] == "none"
    for script in doc.find_all("script"):
        assert "src" in script.attrs or script.attrs.get("type") == "application/json", "JavaScript in a template"


def test_run_page_preloads_exactly_the_first_data_its_script_requests(client: TestClient) -> None:
    run = make_run(client)
    doc = page(client, f"/runs/{run['id']}")
    meta = json_block(doc, "chart-meta")
    # static/js/run_page.js fetches these two URLs first; any other preload would be a second request
    preloads = {link.attrs["href"] for link in doc.find_all("link", rel="preload")}
    assert preloads == {meta["stats_url"], meta["evals_url"]}
    modules = [link.attrs["href"] for link in doc.find_all("link", rel="modulepreload")]
    assert modules and all(client.get(url).status_code == 200 for url in modules)


def test_child_run_page_lists_what_changed_from_its_parent(client: TestClient) -> None:
    parent = make_run(client, name="base", preset="collapse-prone")
    child = make_run(client, preset="collapse-prone", parent_id=parent["id"], config={"label_smoothing": 0.123})
    doc = page(client, f"/runs/{child['id']}")
    rows = [[c.text for c in r.children if not isinstance(c, str)] for r in doc.by_id("parent-diff").find_all("tr")]
    assert rows[1:] == [["label_smoothing", str(preset("collapse-prone").label_smoothing), "0.123"]]


def test_warning_shows_evidence_and_advice_that_can_be_applied(client: TestClient) -> None:
    run = make_run(client, name="collapsing", preset="collapse-prone")
    warning_id = add_warning(client, run["id"])
    for url in (f"/runs/{run['id']}", f"/runs/{run['id']}/warnings"):
        article = page(client, url).by_id("warnings").find("article", data_kind="one_hot")
        assert article is not None and "critical" in article.find(class_="badge").text
        assert "near one-hot" in article.find("p", class_="message").text
        evidence = {r.find("th").text: r.find("td").text for r in article.find("table").find_all("tr")}
        assert evidence == {"onehot_frac": "0.44", "target_onehot_frac": "0.01"}
        assert "label smoothing" in article.find(class_="advice").text
    button = page(client, f"/runs/{run['id']}").find("button", class_="apply-advice")
    assert button.attrs["data-warning-id"] == str(warning_id)
    applied = client.post(button.attrs["data-url"], json={"warning_id": int(button.attrs["data-warning-id"])})
    assert applied.status_code == 201, applied.text
    child_doc = page(client, f"/runs/{applied.json()['id']}")
    assert [r.find("th").text for r in child_doc.by_id("parent-diff").find("tbody").find_all("tr")] == [
        "label_smoothing"
    ]


def test_cancel_button_cancels_a_queued_run_and_the_header_says_so(client: TestClient) -> None:
    run = make_run(client)
    button = page(client, f"/runs/{run['id']}").by_id("cancel-button")
    assert client.post(button.attrs["data-cancel-url"]).status_code == 200
    header = page(client, f"/runs/{run['id']}/header").by_id("run-header")
    assert header.find(class_="badge").text == "cancelled"
    assert header.find(id="cancel-button") is None, "a finished run offers no Cancel"


def test_new_run_from_a_parent_starts_from_its_config_and_links_back(client: TestClient) -> None:
    parent = make_run(client, preset="collapse-prone", config={"temperature": 3.5})
    doc = page(client, f"/runs/new?parent={parent['id']}")
    assert doc.by_id("temperature").attrs["value"] == "3.5"
    assert doc.by_id("preset").find("option", selected="").attrs["value"] == "collapse-prone"
    form = {
        "preset": "collapse-prone",
        "data_source": "synthetic",
        "temperature": "3.5",
        "lr": "0.037",
        "parent_id": doc.find("input", name="parent_id").attrs["value"],
    }
    response = submit_form(client, form, follow_redirects=False)
    child_doc = page(client, response.headers["location"])
    rows = child_doc.by_id("parent-diff").find("tbody").find_all("tr")
    assert [r.find("th").text for r in rows] == ["lr"]


@pytest.mark.parametrize("url", ["/runs/17", "/runs/17/warnings", "/runs/17/header", "/runs/new?parent=17"])
def test_unknown_run_gets_a_page_naming_it(client: TestClient, url: str) -> None:
    assert page(client, url, status=404).find("h1").text == "Run 17 not found"


def test_compare_overlays_runs_and_tabulates_differing_fields(client: TestClient) -> None:
    a = make_run(client, name="a", preset="collapse-prone")
    b = make_run(client, name="b", preset="collapse-prone", config={"temperature": 7.5})
    doc = page(client, f"/compare?ids={a['id']},{b['id']}")
    meta = json_block(doc, "compare-meta")
    assert [r["id"] for r in meta["runs"]] == [a["id"], b["id"]]
    assert len({r["color"] for r in meta["runs"]}) == 2, "each run needs its own colour"
    fields = [r.find("th").text for r in doc.by_id("compare-diff").find("tbody").find_all("tr")]
    assert fields == ["temperature"]
    assert page(client, f"/compare?ids=1,{b['id']},99", status=404).find("h1").text == "Run 99 not found"


@pytest.mark.parametrize("ids", ["1", "1,x", ""])
def test_compare_with_bad_ids_says_what_is_wrong(client: TestClient, ids: str) -> None:
    make_run(client)
    assert page(client, f"/compare?ids={ids}", status=422).find("h1").text in ("Bad run ids", "Pick two or more runs")


def test_every_page_asset_is_served(client: TestClient) -> None:
    run = make_run(client)
    make_run(client)
    urls = set()
    for url in ("/", "/runs/new", f"/runs/{run['id']}", f"/compare?ids={run['id']},{run['id'] + 1}"):
        doc = page(client, url)
        urls |= {s.attrs["src"] for s in doc.find_all("script") if "src" in s.attrs}
        urls |= {link.attrs["href"] for link in doc.find_all("link", rel="stylesheet")}
    assert any(u.startswith("/static/vendor/plotly.min.js?v=") for u in urls)
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_every_template_states_its_required_context() -> None:
    for template in TEMPLATES.rglob("*.html"):
        assert template.read_text().startswith("{# Required context:"), template.name


def test_what_the_database_never_took_is_shown_on_the_run(client: TestClient) -> None:
    run = make_run(client, config={"epochs": 1})
    assert page(client, f"/runs/{run['id']}").find("div", id="data-lost") is None
    note = "50 batches (steps 100-149) could not be stored (OperationalError: database or disk is full)"
    with Session(client.app.state.engine) as session:
        stored = session.get(Run, run["id"])
        stored.data_lost = note
        session.add(stored)
        session.commit()
    assert note in page(client, f"/runs/{run['id']}").by_id("data-lost").text
    assert client.get(f"/api/runs/{run['id']}").json()["data_lost"] == note
