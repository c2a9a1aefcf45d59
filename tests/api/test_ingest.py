"""The ingest API: external runs that a user's own loop streams, stored as a worker's runs are."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import LOCAL, add_run, make_chunk, write_stats
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy import Engine, text

from app.core.config import Settings
from app.main import create_app
from app.worker.claim import claim_run, count_busy_workers, reap_stale_runs
from collapsewatch.transport import chunk_body

INGEST = "/api/ingest/runs"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on SQLite and on PostgreSQL (skipped when it is not reachable): their locks differ."""
    url = f"sqlite:///{tmp_path / 'ingest.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with TestClient(create_app(Settings(database_url=url, data_dir=tmp_path / "data", workers=0)), base_url=LOCAL) as c:
        yield c


def _create(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "my loop", "config": {"lr": 3e-4, "arch": "resnet"}, "num_classes": 8, "client": "box:42", **fields}
    response = client.post(INGEST, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def links_of(client: TestClient, run_id: int) -> list[str]:
    return [a.attrs.get("href", "") for a in parse_html(client.get(f"/runs/{run_id}").text).find_all("a")]


def _post_chunk(client: TestClient, run_id: int, body: dict[str, Any]) -> Any:
    return client.post(f"{INGEST}/{run_id}/chunks", json=body)


def _blocks(engine: Engine, run_id: int) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT level, first_step, last_step, first_epoch, last_epoch, rows, nan_any, stats, hist "
                "FROM statblock WHERE run_id = :r ORDER BY level, first_step"
            ),
            {"r": run_id},
        ).all()


def test_an_external_run_starts_running_and_no_worker_claims_it(client: TestClient, engine: Engine) -> None:
    run = _create(client, steps_per_epoch=23)
    assert (run["status"], run["external"], run["preset"]) == ("running", True, "external")
    assert run["worker"] == "external:box:42", "the client's host and process id"
    assert run["config"] == {"lr": 3e-4, "arch": "resnet"} and run["info"] == {"steps_per_epoch": 23}
    assert run["heartbeat_at"] is not None and run["started_at"] is not None
    assert claim_run(engine, worker="w") is None, "an external run is never queued"
    assert client.get("/api/runs").json()["items"][0]["external"] is True
    with engine.connect() as conn:
        assert count_busy_workers(conn, stale_after_seconds=60) == 0, "a user's loop is no worker"
    queued = add_run(engine)
    assert client.get(f"/api/runs/{queued}").json()["external"] is False
    page = parse_html(client.get(f"/runs/{run['id']}").text)
    assert "Waiting for the first statistics from its training loop (external:box:42)" in page.by_id("waiting").text
    assert not [h for h in links_of(client, run["id"]) if "parent=" in h], "no built-in config to start a run from"
    assert [h for h in links_of(client, queued) if "parent=" in h], "a worker's run has the link"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "lists"])
def test_chunks_are_stored_as_the_workers_sink_stores_them(any_db: TestClient, packed: bool) -> None:
    client, engine = any_db, any_db.app.state.engine
    # uneven chunks that straddle the 16- and 256-batch blocks, so the rollup resumes mid-block
    sizes, start, chunks = [7, 100, 200, 9, 300, 1, 90], 0, []
    for n in sizes:
        chunks.append(make_chunk(start, n))
        start += n
    external = _create(client)["id"]
    for chunk in chunks:
        response = _post_chunk(client, external, chunk_body(chunk, packed=packed))
        assert response.status_code == 201, response.text
        assert response.json()["stored"] == len(chunk)
    assert response.json() == {"run_id": external, "stored": 90, "steps": start, "last_step": start - 1}
    worker_run = add_run(engine)
    write_stats(engine, worker_run, chunks)
    ours, theirs = _blocks(engine, external), _blocks(engine, worker_run)
    assert [row[:8] for row in ours] == [row[:8] for row in theirs]
    assert {row[0] for row in ours} == {0, 1}, "blocks of 16 and of 256 batches"
    for a, b in zip(ours, theirs, strict=True):  # class shares: stored as float32 in the chunk rows they resume from
        assert np.allclose(np.frombuffer(a[8]), np.frombuffer(b[8]), atol=1e-6)
    for query in ("", "?max_points=40", "?since_step=500"):
        got = client.get(f"/api/runs/{external}/stats{query}").json()
        expected = client.get(f"/api/runs/{worker_run}/stats{query}").json()
        assert got["steps"] == expected["steps"] and got["columns"] == expected["columns"], query
    run = client.get(f"/api/runs/{external}").json()
    assert (run["steps"], run["last_step"]) == (start, start - 1)
    assert run["latest"]["loss"] == pytest.approx(chunks[-1].column("loss")[-1])


def test_non_finite_values_travel_as_names_and_columns_left_out_stay_unrecorded(client: TestClient) -> None:
    run_id = _create(client, num_classes=None)["id"]
    body = {
        "steps": [0, 1, 2],
        "epochs": [0, 0, 0],
        "values": {"loss": ["NaN", 1.5, 2], "logit_max": ["Infinity", "-Infinity", 3.0]},
        "class_hist": [[0.5, 0.5, 0.0]] * 3,
    }
    assert _post_chunk(client, run_id, body).status_code == 201
    stats = client.get(f"/api/runs/{run_id}/stats").json()
    assert stats["columns"]["loss"] == [None, 1.5, 2.0] and stats["columns"]["entropy_mean"] == [None] * 3
    assert stats["nonfinite"] == {"loss": [[0, "NaN"]], "logit_max": [[0, "Infinity"], [1, "-Infinity"]]}
    assert client.get(f"/api/runs/{run_id}").json()["num_classes"] == 3, "the first chunk says how many classes"


def _good(n: int = 3, start: int = 0) -> dict[str, Any]:
    return {
        "steps": list(range(start, start + n)),
        "epochs": [0] * n,
        "values": {"loss": [1.0] * n, "entropy_mean": [0.5] * n},
        "class_hist": [[1 / 8] * 8] * n,
    }


@pytest.mark.parametrize(
    "change,loc,words",
    [
        ({"epochs": [0, 0]}, ["body", "epochs"], "2 entries for 3 steps"),
        ({"steps": [0, 2, 2]}, ["body", "steps", 2], "must increase"),
        ({"steps": [5, 4, 6]}, ["body", "steps", 1], "must increase"),
        ({"values": {"loss": [1.0] * 3, "los": [1.0] * 3}}, ["body", "values", "los"], "unknown column 'los'"),
        ({"values": {"loss": [1.0, 2.0]}}, ["body", "values", "loss"], "2 values for 3 steps"),
        ({"values": {}}, ["body", "values"], "holds no statistic"),
        ({"class_hist": [[0.5, 0.5]] * 3}, ["body", "class_hist", 0], "2 class shares for the run's 8"),
        ({"values": {"loss": ["1.5", 1.0, 1.0]}}, ["body", "values", "loss", 0], ""),
        ({"values": {"loss": ["nan", 1.0, 1.0]}}, ["body", "values", "loss", 0], ""),
        ({"class_hist": [[1.5] + [0.0] * 7] * 3}, ["body", "class_hist", 0, 0], "less than or equal to 1"),
        ({"steps": list(range(1025)), "epochs": [0] * 1025}, ["body", "steps"], "at most 1024"),
        ({"steps": [-1, 0, 1]}, ["body", "steps", 0], "greater than or equal to 0"),
        ({"columns": ["loss"]}, ["body", "columns"], "unknown field 'columns'"),
    ],
)
def test_a_bad_chunk_is_a_422_naming_the_field_and_stores_nothing(
    client: TestClient, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    run_id = _create(client)["id"]
    response = _post_chunk(client, run_id, {**_good(), **change})
    assert response.status_code == 422, response.text
    (error, *_) = response.json()["detail"]
    assert error["loc"][: len(loc)] == loc and words in error["msg"], error
    assert client.get(f"/api/runs/{run_id}").json()["steps"] == 0


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode()


def _packed(n: int = 3, **change: Any) -> dict[str, Any]:
    """_good's chunk packed: loss 1.0 and entropy_mean 0.5 per step, uniform shares over 8 classes."""
    packed = {
        "columns": ["loss", "entropy_mean"],
        "values": _b64([1.0] * n + [0.5] * n),
        "class_hist": _b64([1 / 8] * 8 * n),
    }
    return {"steps": list(range(n)), "epochs": [0] * n, "packed": packed | change}


@pytest.mark.parametrize(
    "body,loc,words",
    [
        (_packed(values="not base64!"), ["body", "packed", "values"], "is not base64"),
        (
            _packed(values=base64.b64encode(b"1234567").decode()),
            ["body", "packed", "values"],
            "whole number of float64",
        ),
        (_packed(values=_b64([1.0] * 5)), ["body", "packed", "values"], "5 values for 2 columns x 3 steps"),
        (_packed(columns=["loss", "los"]), ["body", "packed", "columns", 1], "unknown column 'los'"),
        (_packed(columns=["loss", "loss"]), ["body", "packed", "columns", 1], "named twice"),
        (_packed(columns=[]), ["body", "packed", "columns"], "at least 1"),
        (_packed(class_hist=_b64([0.5] * 6)), ["body", "packed", "class_hist"], "of the run's 8 classes"),
        (_packed(class_hist=_b64([1.5] + [0.0] * 23)), ["body", "packed", "class_hist"], "step 0 of the chunk"),
        (_packed(class_hist=_b64([float("nan")] * 24)), ["body", "packed", "class_hist"], "outside [0, 1]"),
        ({**_packed(), "values": {"loss": [1.0] * 3}}, ["body", "packed"], "not both"),
        ({"steps": [0], "epochs": [0]}, ["body", "values"], "is required"),
    ],
)
def test_a_bad_packed_chunk_is_a_422_naming_the_field_and_stores_nothing(
    client: TestClient, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    run_id = _create(client)["id"]
    response = _post_chunk(client, run_id, body)
    assert response.status_code == 422, response.text
    (error, *_) = response.json()["detail"]
    assert error["loc"][: len(loc)] == loc and words in error["msg"], error
    assert client.get(f"/api/runs/{run_id}").json()["steps"] == 0


def test_a_packed_chunk_keeps_nan_and_equals_its_lists(client: TestClient) -> None:
    listed, packed = _create(client)["id"], _create(client)["id"]
    body = _packed(values=_b64([1.0, float("nan"), float("inf"), 0.5, 0.5, 0.5]))
    assert _post_chunk(client, packed, body).status_code == 201
    lists = {**_good(), "values": {"loss": [1.0, "NaN", "Infinity"], "entropy_mean": [0.5] * 3}}
    assert _post_chunk(client, listed, lists).status_code == 201
    a, b = (client.get(f"/api/runs/{i}/stats").json() for i in (listed, packed))
    assert a["columns"] == b["columns"] and a["class_hist"] == b["class_hist"]
    assert b["nonfinite"]["loss"] == [[1, "NaN"], [2, "Infinity"]]
    assert _post_chunk(client, packed, body).json()["stored"] == 0, "an exact repeat, packed, stores nothing"


def test_a_repeated_chunk_stores_nothing_and_an_overlapping_one_is_a_409(any_db: TestClient) -> None:
    client = any_db
    run_id = _create(client)["id"]
    first = _good(50)
    assert _post_chunk(client, run_id, first).status_code == 201
    repeat = _post_chunk(client, run_id, first)  # the answer was lost and the client sent it again
    assert repeat.status_code == 200 and repeat.json()["stored"] == 0
    changed = {**first, "values": {**first["values"], "loss": [2.0] * 50}}
    overlap = _post_chunk(client, run_id, changed)
    assert overlap.status_code == 409 and "send only steps after 49" in overlap.json()["detail"]
    assert _post_chunk(client, run_id, _good(20, start=40)).status_code == 409, "a partial overlap"
    assert _post_chunk(client, run_id, {**first, "values": {"loss": [1.0] * 50}}).status_code == 409, "fewer columns"
    assert _post_chunk(client, run_id, _good(10, start=60)).status_code == 201, "a gap is no overlap"
    stats = client.get(f"/api/runs/{run_id}/stats").json()
    assert stats["steps"] == [*range(50), *range(60, 70)] and set(stats["columns"]["loss"]) == {1.0}


def _eval(step: int = 10) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": 1,
        "metrics": {"objective": 0.9, "kl": "NaN", "accuracy": 0.5},
        "pred_hist": [0.5, 0.5],
        "target_hist": [0.25, 0.75],
        "confusion": [[1, 0], [1, 2]],
    }


def _warning(step: int = 12, severity: str = "critical") -> dict[str, Any]:
    return {
        "kind": "dominant_class",
        "severity": severity,
        "step": step,
        "message": "Class 0 takes 97% of the predictions",
        "evidence": {"predicted_share": 0.97, "ratio": "Infinity"},
        "advice": {"message": "Lower the learning rate 0.3 -> 0.09", "overrides": {"lr": 0.09}},
    }


def test_evaluations_and_warnings_are_stored_once_and_shown(client: TestClient) -> None:
    run_id = _create(client, num_classes=2)["id"]
    assert client.post(f"{INGEST}/{run_id}/evals", json=_eval()).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/evals", json=_eval()).json() == {"stored": False}
    (ev,) = client.get(f"/api/runs/{run_id}/evals").json()
    assert ev["metrics"]["objective"] == 0.9 and ev["nonfinite"] == {"kl": "NaN"}
    assert ev["confusion"] == [[1, 0], [1, 2]] and ev["pred_hist"] == [0.5, 0.5]
    bad = client.post(f"{INGEST}/{run_id}/evals", json={**_eval(11), "metrics": {"accuracy": 0.5}})
    assert bad.status_code == 422 and "'objective' is missing" in bad.json()["detail"][0]["msg"]
    wrong = client.post(f"{INGEST}/{run_id}/evals", json={**_eval(11), "pred_hist": [1.0]})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "pred_hist"]
    assert client.post(f"{INGEST}/{run_id}/warnings", json=_warning(severity="warning")).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/warnings", json=_warning()).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/warnings", json=_warning()).status_code == 200
    warnings = client.get(f"/api/runs/{run_id}/warnings").json()
    assert [w["severity"] for w in warnings] == ["warning", "critical"]
    assert warnings[1]["evidence"]["ratio"] == "Infinity" and warnings[1]["advice"]["overrides"] == {"lr": 0.09}
    run = client.get(f"/api/runs/{run_id}").json()
    assert (run["warning_count"], run["max_severity"]) == (2, "critical")
    page = parse_html(client.get(f"/runs/{run_id}").text)
    assert page.by_id("external-badge").text.strip() == "external"
    assert page.find(id="cancel-button") is None, "nothing stops a user's loop from the page"


def test_finish_ends_the_run_once(client: TestClient) -> None:
    run_id = _create(client)["id"]
    assert _post_chunk(client, run_id, _good(5)).status_code == 201
    body = {"status": "failed", "error": "RuntimeError: boom", "data_lost": "3 batches were dropped", "duration_s": 4.5}
    response = client.post(f"{INGEST}/{run_id}/finish", json=body)
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["status"], run["error"], run["data_lost"], run["duration_s"]) == (
        "failed", "RuntimeError: boom", "3 batches were dropped", 4.5,
    )  # fmt: skip
    assert run["finished_at"] is not None and run["steps"] == 5
    assert client.post(f"{INGEST}/{run_id}/finish", json=body).status_code == 200, "the same end again"
    again = client.post(f"{INGEST}/{run_id}/finish", json={"status": "completed"})
    assert again.status_code == 409 and "already ended as failed" in again.json()["detail"]
    late = _post_chunk(client, run_id, _good(5, start=5))
    assert late.status_code == 409 and "is failed: it takes no more records" in late.json()["detail"]
    assert client.post(f"{INGEST}/{run_id}/finish", json={"status": "queued"}).status_code == 422
    assert client.post(f"{INGEST}/999/finish", json={}).json() == {"detail": "Run 999 not found"}


def test_a_workers_run_takes_no_records(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    response = _post_chunk(client, run_id, _good())
    assert response.status_code == 409 and "trained by a worker" in response.json()["detail"]
    assert client.post(f"{INGEST}/{run_id}/heartbeat").status_code == 409


def test_a_silent_external_run_is_marked_lost_and_its_next_request_takes_it_back(any_db: TestClient) -> None:
    client, engine = any_db, any_db.app.state.engine
    run_id = _create(client)["id"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE run SET heartbeat_at = '2000-01-01 00:00:00.000000' WHERE id = :r"), {"r": run_id})
    assert reap_stale_runs(engine, stale_after_seconds=1.0) == [run_id]
    lost = client.get(f"/api/runs/{run_id}").json()
    assert lost["status"] == "failed" and lost["error"].startswith("worker lost (no heartbeat since 2000-01-01")
    beat = client.post(f"{INGEST}/{run_id}/heartbeat").json()
    assert beat == {"status": "running", "cancel_requested": False, "steps": 0, "last_step": -1}
    assert _post_chunk(client, run_id, _good()).status_code == 201
    done = client.post(f"{INGEST}/{run_id}/finish", json={"status": "completed"}).json()
    assert done["status"] == "completed" and done["error"].startswith("marked failed for a while: worker lost")


def test_with_a_token_every_ingest_write_needs_it(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'tok.db'}", data_dir=tmp_path, workers=0, token=token)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        assert client.post(INGEST, json={}).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        run_id = client.post(INGEST, json={"num_classes": 8}, headers=auth).json()["id"]
        assert _post_chunk(client, run_id, _good()).status_code == 401
        assert client.post(f"{INGEST}/{run_id}/chunks", json=_good(), headers=auth).status_code == 201
        foreign = {**auth, "Origin": "http://evil.example"}
        assert client.post(f"{INGEST}/{run_id}/heartbeat", headers=foreign).status_code == 403
        wrong = {"Authorization": "Bearer wrong"}
        assert client.post(f"{INGEST}/{run_id}/finish", json={}, headers=wrong).status_code == 401


def test_an_old_database_gains_the_external_column_and_its_runs_stay_workers_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE run (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, preset VARCHAR NOT NULL, "
            "status VARCHAR NOT NULL, config JSON NOT NULL, num_classes INTEGER NOT NULL, "
            "created_at DATETIME NOT NULL, "
            "started_at DATETIME, finished_at DATETIME, heartbeat_at DATETIME, worker VARCHAR, "
            "cancel_requested BOOLEAN NOT NULL, error TEXT, steps INTEGER NOT NULL)"
        )
        conn.execute(
            "INSERT INTO run VALUES (1, 'old', 'fixed', 'queued', '{}', 8, '2024-05-01 10:00:00', "
            "NULL, NULL, NULL, NULL, 0, NULL, 0)"
        )
    app = create_app(Settings(database_url=f"sqlite:///{path}", data_dir=tmp_path, workers=0))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/api/runs/1").json()["external"] is False
        assert claim_run(app.state.engine, worker="w") == 1, "an old queued run is still a worker's to claim"
        assert _create(client)["external"] is True


@pytest.mark.parametrize("url", [INGEST, f"{INGEST}/1/chunks", "/api/runs"])
def test_a_refused_body_holding_nan_tokens_is_a_422_that_names_them(client: TestClient, url: str) -> None:
    _create(client)
    response = client.post(
        url, content=b'{"label_smoothing": Infinity, "x": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert '"Infinity"' in response.text and '"NaN"' in response.text, "echoed by name: JSON has no such number"


def test_an_external_run_streams_and_compares_like_a_workers_run(client: TestClient, engine: Engine) -> None:
    run_id = _create(client, num_classes=2)["id"]
    for start in (0, 30):
        body = {**_good(30, start), "class_hist": [[0.5, 0.5]] * 30}
        assert _post_chunk(client, run_id, body).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/evals", json=_eval(59)).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/warnings", json=_warning()).status_code == 201
    assert client.post(f"{INGEST}/{run_id}/finish", json={"status": "completed"}).status_code == 200
    blocks = [b for b in client.get(f"/api/runs/{run_id}/events").text.split("\n\n") if "event: " in b]
    events = [
        (fields["event"], json.loads(fields["data"]))
        for fields in (dict(line.split(": ", 1) for line in b.splitlines() if ": " in line) for b in blocks)
    ]
    assert [s for kind, data in events if kind == "stats" for s in data["steps"]] == list(range(60))
    assert [data["step"] for kind, data in events if kind == "eval"] == [59]
    assert [data["kind"] for kind, data in events if kind == "warning"] == ["dominant_class"]
    assert events[-1] == ("status", {"status": "completed", "steps": 60, "error": None})
    worker_run = add_run(engine)
    page = client.get(f"/compare?ids={run_id},{worker_run}")
    assert page.status_code == 200 and "my loop" in page.text


def test_a_create_repeated_with_its_client_key_answers_the_same_run(any_db: TestClient) -> None:
    key = "0123456789abcdef0123456789abcdef"
    first = _create(any_db, client_key=key, started_at="2026-01-02T03:04:05Z")
    assert first["started_at"].startswith("2026-01-02T03:04:05")
    again = any_db.post(INGEST, json={"name": "renamed", "client_key": key})
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["name"] == "my loop"
    assert any_db.post(f"{INGEST}/{first['id']}/finish", json={"status": "completed"}).status_code == 200
    ended = any_db.post(INGEST, json={"client_key": key})
    assert (ended.status_code, ended.json()["status"]) == (200, "completed"), "an ended run is answered as it is"
    other = _create(any_db, client_key=key[::-1])
    assert other["id"] != first["id"]
    assert len(any_db.get("/api/runs").json()["items"]) == 2


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("client_key", "short", "at least 8"),
        ("client_key", "has spaces in it", "pattern"),
        ("started_at", "2999-01-01T00:00:00Z", "later than the server's clock"),
    ],
)
def test_a_bad_client_key_or_start_is_a_422_naming_it(client: TestClient, field: str, value: str, says: str) -> None:
    response = client.post(INGEST, json={field: value})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == field and says in error["msg"]
    assert client.get("/api/runs").json()["items"] == []


def test_a_warning_kind_that_is_no_identifier_is_a_422(client: TestClient) -> None:
    run = _create(client)
    response = client.post(f"{INGEST}/{run['id']}/warnings", json={**_warning(), "kind": "Drop Table"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "kind"
    assert client.get(f"/api/runs/{run['id']}/warnings").json() == []


def test_an_external_runs_advice_is_a_config_change_to_make_not_a_button(client: TestClient) -> None:
    run = _create(client, config={"lr": 0.3, "arch": "resnet"})
    advice = {"message": "Lower the lr and clip", "overrides": {"lr": 0.09, "max_grad_norm": 1.0}}
    assert client.post(f"{INGEST}/{run['id']}/warnings", json={**_warning(), "advice": advice}).status_code == 201
    page = parse_html(client.get(f"/runs/{run['id']}").text)
    (table,) = page.find_all("table", class_="config-change")
    rows = [[cell.text.strip() for cell in tr.find_all() if cell.tag in ("th", "td")] for tr in table.find_all("tr")]
    assert rows[1:] == [["lr", "0.3", "0.09"], ["max_grad_norm", "not in your config", "1.0"]]
    assert page.find_all("button", class_="apply-advice") == [], "the worker cannot rerun a user's own loop"
    (snippet,) = page.find_all("pre", class_="config-snippet")
    assert json.loads(snippet.text.strip().removeprefix("config.update(").removesuffix(")")) == advice["overrides"]


def test_scalars_are_stored_once_downsampled_keeping_spikes_and_validated(client: TestClient) -> None:
    run = _create(client)
    path = f"{INGEST}/{run['id']}/scalars"
    values = [0.0] * 1000
    values[500] = 99.0
    body = {"series": {"aux": {"steps": list(range(1000)), "values": values}}}
    assert client.post(path, json=body).status_code == 201
    assert client.post(path, json=body).status_code == 200, "an exact repeat stores nothing"
    changed = {"series": {"aux": {"steps": [999, 1000], "values": [1.0, 2.0]}}}
    clash = client.post(path, json=changed)
    assert clash.status_code == 409 and "overlap" in clash.json()["detail"]
    more = {"series": {"aux": {"steps": [1000, 1001], "values": ["NaN", 3.0]}}}
    assert client.post(path, json=more).status_code == 201
    got = client.get(f"/api/runs/{run['id']}/scalars", params={"max_points": 60}).json()["series"]["aux"]
    assert got["points"] == 1002 and len(got["steps"]) <= 60 and 99.0 in got["values"] and None in got["values"]
    for bad, where in (
        ({"series": {"a b": {"steps": [5000], "values": [1.0]}}}, "a b"),
        ({"series": {"aux2": {"steps": [1, 1], "values": [1.0, 2.0]}}}, "steps"),
        ({"series": {"aux3": {"steps": [1, 2], "values": [1.0]}}}, "values"),
    ):
        response = client.post(path, json=bad)
        assert response.status_code == 422 and where in str(response.json()["detail"][0]["loc"]), response.text
    assert client.get(f"/api/runs/{run['id']}/scalars").json()["names"] == ["aux"]
    assert client.get("/api/runs/999/scalars").status_code == 404
