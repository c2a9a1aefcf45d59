"""Dataset uploads: validated on arrival, row and column named on error, nothing kept from a bad file;
previewed without being stored; described by checksum, columns and target spread, also after an upgrade."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import LOCAL, WorkerThread, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect

from app.core.config import Settings
from app.main import create_app
from app.storage.engine import init_db


def _csv(rows: int = 64, broken: dict[tuple[int, str], str] | None = None) -> bytes:
    """Features f0..f2 plus probability columns p0..p2 (rows sum to 1); `broken` replaces cells."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    p = rng.dirichlet(np.ones(3), size=rows)
    header = ["f0", "f1", "f2", "p0", "p1", "p2"]
    lines = [",".join(header)]
    for i in range(rows):
        cells = [f"{v:.6f}" for v in (*x[i], *p[i])]
        for (row, column), value in (broken or {}).items():
            if row == i + 1:
                cells[header.index(column)] = value
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


def _stored_files(settings: Settings) -> list[Path]:
    return sorted(settings.data_dir.glob("*")) if settings.data_dir.exists() else []


def test_upload_is_described_and_a_run_trains_on_it(client: TestClient, engine: Engine, settings: Settings) -> None:
    response = client.post(
        "/api/datasets", files={"file": ("soft targets.csv", _csv(), "text/csv")}, data={"name": "mine"}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert {
        k: dataset[k] for k in ("name", "filename", "format", "rows", "n_features", "num_classes", "target_kind")
    } == {
        "name": "mine",
        "filename": "soft targets.csv",
        "format": "csv",
        "rows": 64,
        "n_features": 3,
        "num_classes": 3,
        "target_kind": "probabilities",
    }
    (stored,) = _stored_files(settings)
    assert stored.suffix == ".csv" and "soft" not in stored.name  # a generated name, not the user's
    assert client.get("/api/datasets").json()[0]["id"] == dataset["id"]

    body = {"dataset_id": dataset["id"], "config": {"epochs": 1, "batch_size": 16, "hidden_sizes": [8]}}
    rejected = client.post("/api/runs", json=body)  # the preset's 1.5 nats exceed ln(3): named, not clipped
    assert rejected.status_code == 422 and rejected.json()["detail"][0]["loc"] == ["body", "config", "min_entropy"]
    response = client.post("/api/runs", json=body | {"config": body["config"] | {"min_entropy": 0.8}})
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["config"]["data"] | {"path": None} == run["config"]["data"] | {
        "kind": "table",
        "num_classes": 3,
        "label_column": None,
        "path": None,
    }
    assert Path(run["config"]["data"]["path"]) == stored.resolve() and run["num_classes"] == 3
    with WorkerThread(engine):
        done = wait_until(
            lambda: (
                (r := client.get(f"/api/runs/{run['id']}").json())["status"] != "queued"
                and r["status"] != "running"
                and r
            ),
            timeout=30,
        )
    assert done["status"] == "completed", done["error"]
    assert len(client.get(f"/api/runs/{run['id']}/stats").json()["class_hist"][0]) == 3


def test_broken_upload_names_row_and_column_and_stores_nothing(client: TestClient, settings: Settings) -> None:
    content = _csv(broken={(7, "p2"): "abc", (9, "f1"): ""})
    response = client.post("/api/datasets", files={"file": ("bad.csv", content, "text/csv")})
    assert response.status_code == 422
    errors = response.json()["detail"]
    where = {(e["row"], e["column"]) for e in errors}
    assert (7, "p2") in where and (9, "f1") in where
    assert all(e["loc"] == ["body", "file"] for e in errors)
    assert any(e["msg"].startswith("row 7, column p2") for e in errors)
    assert client.get("/api/datasets").json() == []
    assert _stored_files(settings) == []


def test_upload_of_an_unknown_file_type_or_label_column_is_a_422(client: TestClient, settings: Settings) -> None:
    response = client.post("/api/datasets", files={"file": ("notes.docx", b"hello", "application/octet-stream")})
    assert response.status_code == 422 and "docx" in response.json()["detail"][0]["msg"]
    response = client.post("/api/datasets", files={"file": ("t.csv", _csv(), "text/csv")}, data={"label_column": "y"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["column"] == "y"
    assert _stored_files(settings) == [] and client.get("/api/datasets").json() == []
    assert client.get("/api/datasets/99").json() == {"detail": "Dataset 99 not found"}


def test_a_run_config_never_names_a_file(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    # the probe: /etc/passwd as a "table" was accepted and its lines came back in the run's error
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b,label\n1,2,x\n3,4,y\n")
    for path in ("/etc/passwd", str(secret), "../collapsewatch.db"):
        body = {"config": {"data": {"kind": "table", "path": path, "label_column": "label"}}}
        response = client.post("/api/runs", json=body)
        assert response.status_code == 422, response.text
        (item,) = response.json()["detail"]
        assert item["loc"] == ["body", "config", "data", "path"] and "dataset_id" in item["msg"]
        assert path not in response.text
    # a path alongside a real dataset is refused too, not silently replaced
    dataset = client.post("/api/datasets", files={"file": ("t.csv", _csv(), "text/csv")}).json()
    body = {"dataset_id": dataset["id"], "config": {"min_entropy": 0.8, "data": {"path": "/etc/passwd"}}}
    assert client.post("/api/runs", json=body).status_code == 422
    no_dataset = client.post("/api/runs", json={"config": {"data": {"kind": "table"}}})
    assert no_dataset.status_code == 422 and no_dataset.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert client.get("/api/runs").json()["total"] == 0


# the table: three unnamed measurements and two probability columns named by their class
ABC = [(0.9, 1.0, 2.0, 3.0), (0.5, 2.0, 3.0, 1.0), (0.2, 3.0, 1.0, 2.0), (0.7, 4.0, 0.0, 5.0)]


def _abc_csv() -> bytes:
    rows = [f"{a},{b},{c},{p},{1 - p:.1f}" for p, a, b, c in ABC]
    return ("a,b,c,prob_a,prob_b\n" + "\n".join(rows) + "\n").encode()


def _abc_expected() -> dict[str, Any]:
    p = np.array([[p, 1 - p] for p, *_ in ABC])
    return {
        "format": "csv",
        "rows": 4,
        "n_features": 3,
        "num_classes": 2,
        "target_kind": "probabilities",
        "feature_columns": ["a", "b", "c"],
        "target_columns": ["prob_a", "prob_b"],
        "class_names": ["a", "b"],
        "sha256": hashlib.sha256(_abc_csv()).hexdigest(),
        "target_entropy": pytest.approx(float(-(p * np.log(p)).sum(axis=1).mean())),
        "max_target_entropy": pytest.approx(math.log(2)),
        "class_shares": pytest.approx([0.575, 0.425]),
    }


def test_a_dataset_keeps_its_checksum_columns_and_target_spread(client: TestClient) -> None:
    stored = client.post("/api/datasets", files={"file": ("abc.csv", _abc_csv(), "text/csv")})
    assert stored.status_code == 201, stored.text
    expected = _abc_expected()
    assert {k: stored.json()[k] for k in expected} == expected
    read = client.get(f"/api/datasets/{stored.json()['id']}").json()
    assert {k: read[k] for k in expected} == expected
    assert {k: client.get("/api/datasets").json()[0][k] for k in expected} == expected


def test_a_preview_reads_the_upload_like_a_store_and_keeps_nothing(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/api/datasets/preview", files={"file": ("abc.csv", _abc_csv(), "text/csv")}, data={"name": "mine"}
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    expected = _abc_expected()
    assert {k: preview[k] for k in expected} == expected
    assert (preview["name"], preview["filename"]) == ("mine", "abc.csv") and "id" not in preview
    assert client.get("/api/datasets").json() == [] and _stored_files(settings) == []

    # with the label column named, the probability columns are features: the preview says so
    relabelled = client.post(
        "/api/datasets/preview",
        files={"file": ("t.csv", b"x,prob_a,kind\n1,0.5,cat\n2,0.1,dog\n3,0.7,cat\n", "text/csv")},
        data={"label_column": "kind"},
    ).json()
    assert (relabelled["feature_columns"], relabelled["target_columns"]) == (["x", "prob_a"], ["kind"])
    assert relabelled["target_kind"] == "label" and relabelled["class_shares"] == pytest.approx([2 / 3, 1 / 3])

    # a broken file is refused by the preview with the same row and column errors, and leaves nothing
    broken = _csv(broken={(7, "p2"): "abc"})
    refused = client.post("/api/datasets/preview", files={"file": ("bad.csv", broken, "text/csv")})
    stored = client.post("/api/datasets", files={"file": ("bad.csv", broken, "text/csv")})
    assert refused.status_code == stored.status_code == 422
    assert refused.json() == stored.json() and (refused.json()["detail"][0]["row"], "p2") == (7, "p2")
    assert client.get("/api/datasets").json() == [] and _stored_files(settings) == []


# the dataset table before checksums, columns and target statistics were kept
OLD_DATASET_SCHEMA = """
CREATE TABLE dataset (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(200) NOT NULL, filename VARCHAR NOT NULL,
    format VARCHAR NOT NULL, rows INTEGER NOT NULL, n_features INTEGER NOT NULL, num_classes INTEGER NOT NULL,
    target_kind VARCHAR NOT NULL, label_column VARCHAR, path VARCHAR NOT NULL, created_at DATETIME NOT NULL);
"""


def test_an_old_database_gains_the_dataset_columns_and_keeps_its_datasets(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_DATASET_SCHEMA)
        conn.execute(
            "INSERT INTO dataset VALUES (1, 'old', 'old.csv', 'csv', 64, 3, 3, 'probabilities', NULL,"
            " '/nowhere/old.csv', '2024-05-01 10:00:00.000000')"
        )
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=tmp_path / "data", workers=0)
    app = create_app(settings)
    columns = {c["name"] for c in inspect(app.state.engine).get_columns("dataset")}
    new = {"sha256", "target_entropy", "feature_columns", "target_columns", "class_names", "class_shares"}
    assert columns >= new
    with TestClient(app, base_url=LOCAL) as client:
        old = client.get("/api/datasets/1").json()
        assert (old["name"], old["rows"], old["n_features"]) == ("old", 64, 3)
        assert {k: old[k] for k in new} == dict.fromkeys(new)  # not recorded then: null, not made up
        assert old["max_target_entropy"] == pytest.approx(math.log(3))
        stored = client.post("/api/datasets", files={"file": ("abc.csv", _abc_csv(), "text/csv")}).json()
        assert stored["id"] == 2 and stored["sha256"] == _abc_expected()["sha256"]
    assert init_db(app.state.engine) == []  # a second start has nothing left to add
