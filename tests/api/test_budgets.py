"""The server's budgets: oversized runs, uploads and tables are refused with their size, before any cost."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import LOCAL
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


@pytest.fixture
def small(settings: Settings) -> Iterator[TestClient]:
    """A server with a 64 MB run budget (at most 1,398,101 table cells) and 4 MB uploads."""
    tight = settings.model_copy(update={"max_run_memory_mb": 64, "max_upload_mb": 4})
    with TestClient(create_app(tight), base_url=LOCAL) as client:
        yield client


def _stored(settings: Settings) -> list[Path]:
    return sorted(settings.data_dir.glob("*")) if settings.data_dir.exists() else []


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"hidden_sizes": [65536, 65536, 65536]}, "parameters"),  # ~137 GB of weights and optimizer state
        ({"data": {"n_samples": 10_000_000}}, "GB"),
        ({"data": {"n_features": 100_000}}, "GB"),
        ({"epochs": 1000, "data": {"n_samples": 1_000_000}}, "time budget"),  # 12.5M steps
    ],
)
def test_a_run_over_the_budget_is_refused_with_its_estimate(client: TestClient, config: dict, says: str) -> None:
    response = client.post("/api/runs", json={"config": config})
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "config"] and item["type"] == "value_error.budget"
    assert item["msg"].startswith("this run would need about") and says in item["msg"]
    assert client.get("/api/runs").json()["total"] == 0
    assert client.post("/api/runs", json={"config": {"epochs": 1}}).status_code == 201


def test_the_form_shows_the_estimate_too(client: TestClient) -> None:
    token = client.get("/runs/new").text.split('name="csrf_token" value="')[1].split('"')[0]
    response = client.post("/runs/new", data={"preset": "fixed", "data.n_samples": "10000000", "csrf_token": token})
    assert response.status_code == 422 and "this run would need about" in response.text
    assert client.get("/api/runs").json()["total"] == 0


def test_an_npz_bomb_is_refused_from_its_headers(small: TestClient, settings: Settings) -> None:
    # 4M zero cells compress to a few kB; the archive's headers tell their size before anything inflates
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((2_000_000, 1), np.float32), y=np.zeros(2_000_000, np.int64))
    assert buf.tell() < 100_000
    response = small.post("/api/datasets", files={"file": ("bomb.npz", buf.getvalue())})
    assert response.status_code == 422, response.text
    assert "4,000,000 cells" in response.text and "64 MB" in response.text
    assert _stored(settings) == []


def test_a_parquet_of_millions_of_rows_is_refused_from_its_footer(
    small: TestClient, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "rows.parquet"
    n = 1_000_000
    pq.write_table(pa.table({"a": np.zeros(n), "label": np.zeros(n, np.int64)}), path)
    assert path.stat().st_size < 1 << 20
    response = small.post("/api/datasets", files={"file": ("rows.parquet", path.read_bytes())})
    assert response.status_code == 422 and "2,000,000 cells" in response.text
    assert _stored(settings) == []


def test_a_csv_whose_cells_exceed_the_budget_is_refused_once_read(small: TestClient, settings: Settings) -> None:
    # a CSV says nothing of its size before it is read: the child that parses it counts
    rows = "\n".join(f"{i % 7},{i % 3}" for i in range(500_000))
    body = ("a,label\n" + rows + "\n").encode()
    assert len(body) < 4 << 20
    response = small.post("/api/datasets", files={"file": ("many.csv", body)})
    assert response.status_code == 422 and "cells" in response.text, response.text
    assert _stored(settings) == []


def test_an_upload_over_the_byte_cap_is_cut_off(small: TestClient, settings: Settings) -> None:
    body = b"a,label\n" + b"0.5,1\n" * 800_000  # 4.8 MB
    response = small.post("/api/datasets", files={"file": ("big.csv", body)})
    assert response.status_code == 413 and "limit of 4 MB" in response.json()["detail"]
    assert _stored(settings) == []
    ok = small.post("/api/datasets", files={"file": ("ok.csv", b"a,label\n" + b"0.5,1\n0.2,0\n" * 50)})
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    "length",
    [b"-5", b"+2", b" 2", b"2 ", b"\xd9\xa2", b"\xef\xbc\x92", b"2, 2", b"0x2", b"2.0", b""],
    ids=["negative", "plus sign", "leading space", "trailing space", "arabic-indic digit", "fullwidth digit",
         "a list", "hex", "decimal", "empty"],
)  # fmt: skip
def test_a_content_length_that_is_not_a_byte_count_is_a_400(client: TestClient, length: bytes) -> None:
    response = client.post(
        "/api/runs", content=b"{}", headers={b"content-type": b"application/json", b"content-length": length}
    )
    assert response.status_code == 400, response.text[:300]
    assert "Content-Length" in response.json()["detail"] and "content-security-policy" in response.headers
    assert client.get("/api/runs").json()["total"] == 0


def test_content_lengths_that_disagree_are_a_400(client: TestClient) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"content-length", b"3")]
    response = client.post("/api/runs", content=b"{}", headers=headers)
    assert response.status_code == 400 and "Content-Length" in response.json()["detail"]


def test_a_content_length_of_thousands_of_digits_is_refused_as_too_large(client: TestClient) -> None:
    # int() refuses more than 4,300 digits with a ValueError: that was a 500
    response = client.post("/api/datasets", content=b"x", headers={b"content-length": b"9" * 5000})
    assert response.status_code == 413 and "COLLAPSEWATCH_MAX_UPLOAD_MB" in response.json()["detail"]
    # leading zeros are still a byte count: this body is 2 bytes long and goes through
    headers = {b"content-type": b"application/json", b"content-length": b"0" * 5000 + b"2"}
    assert client.post("/api/runs", content=b"{}", headers=headers).status_code == 201
