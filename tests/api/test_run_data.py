"""The run page's data: the dataset of a table run in its header, and only the config fields its data reads;
the new-run form's upload help states the column rule the reader applies."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from html_dom import Element, parse_html
from sqlalchemy import text

from app.pages.config_form import flatten
from trainer import DATA_FIELDS_OF_KIND, preset

TABLE = b"a,b,c,prob_a,prob_b\n1,2,3,0.9,0.1\n2,3,1,0.5,0.5\n3,1,2,0.2,0.8\n4,0,5,0.7,0.3\n"
TINY = {"epochs": 1, "batch_size": 4, "hidden_sizes": [4], "min_entropy": 0.5}  # 0.5 nats: under ln 2
GENERATOR_ONLY = [f"data.{name}" for name in DATA_FIELDS_OF_KIND["synthetic"]]


def _page(client: TestClient, url: str) -> Element:
    response = client.get(url)
    assert response.status_code == 200, response.text[:500]
    return parse_html(response.text)


def _config_fields(doc: Element) -> list[str]:
    return [row.find("th").text for row in doc.by_id("config-table").find("tbody").find_all("tr")]


def _facts(section: Element) -> dict[str, str]:
    return {pair.find("dt").text: pair.find("dd").text for pair in section.find_all("div")}


def _table_run(client: TestClient) -> tuple[dict, dict]:
    dataset = client.post("/api/datasets", files={"file": ("abc.csv", TABLE, "text/csv")}, data={"name": "abc"})
    assert dataset.status_code == 201, dataset.text
    run = client.post("/api/runs", json={"dataset_id": dataset.json()["id"], "config": TINY})
    assert run.status_code == 201, run.text
    return dataset.json(), run.json()


def test_a_table_run_shows_its_dataset_in_the_header(client: TestClient) -> None:
    dataset, run = _table_run(client)
    for url in (f"/runs/{run['id']}", f"/runs/{run['id']}/header"):  # the first load and each live refresh
        section = _page(client, url).by_id("run-dataset")
        assert _facts(section) == {
            "Dataset": f"#{dataset['id']} abc",
            "Rows × features": "4 × 3",
            "Classes": "2 soft targets",
            "Target entropy": f"{dataset['target_entropy']:.3f} of ln 2 = 0.693 nats",
            "SHA-256": hashlib.sha256(TABLE).hexdigest()[:12],
        }
        link = section.find("a")
        assert link.attrs["href"].endswith(f"/api/datasets/{dataset['id']}")
        assert section.find("code").attrs["title"] == hashlib.sha256(TABLE).hexdigest()
    assert client.get(link.attrs["href"]).json()["feature_columns"] == ["a", "b", "c"]


def test_a_dataset_from_an_older_version_says_what_was_not_recorded(client: TestClient) -> None:
    _, run = _table_run(client)
    with client.app.state.engine.begin() as conn:  # as the schema upgrade leaves a dataset stored before
        conn.execute(text("UPDATE dataset SET sha256 = NULL, target_entropy = NULL"))
    facts = _facts(_page(client, f"/runs/{run['id']}").by_id("run-dataset"))
    assert (facts["Target entropy"], facts["SHA-256"]) == ("not recorded", "not recorded")
    assert facts["Rows × features"] == "4 × 3"


def test_a_table_run_hides_the_generator_settings_it_never_read(client: TestClient) -> None:
    _, run = _table_run(client)
    assert all(field in run["config"]["data"] for field in DATA_FIELDS_OF_KIND["synthetic"])  # stored as trained
    fields = _config_fields(_page(client, f"/runs/{run['id']}"))
    assert not set(GENERATOR_ONLY) & set(fields), fields
    # what a table run does read stays: its file, class count, split seed and validation share
    assert {"data.kind", "data.path", "data.num_classes", "data.seed", "data.val_fraction"} <= set(fields)


def test_a_synthetic_run_shows_the_generator_and_no_dataset(client: TestClient) -> None:
    run = client.post("/api/runs", json={"config": {"epochs": 1}}).json()
    doc = _page(client, f"/runs/{run['id']}")
    fields = _config_fields(doc)
    table_only = {"data.path", "data.label_column"}
    assert fields == [field for field in flatten(preset("fixed").to_dict()) if field not in table_only]
    assert not [el for el in doc.iter() if el.attrs.get("id") == "run-dataset"]


def test_the_upload_help_states_the_column_rule(client: TestClient) -> None:
    doc = _page(client, "/runs/new")
    rule = doc.by_id("upload-rule")
    codes = {el.text for el in rule.find_all("code")}
    assert {"label", "p0", "prob_<class>", "p_<class>", "x", "y", "p"} <= codes, codes
    assert "Every other column is a feature" in rule.text
    upload = doc.by_id("upload")
    assert upload.attrs["data-preview-url"].endswith("/api/datasets/preview")
    assert doc.by_id("upload-preview-template").tag == "template"
