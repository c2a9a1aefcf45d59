"""Dataset uploads: validated on arrival, row and column named on error, nothing kept from a bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from factories import WorkerThread, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.core.config import Settings


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
