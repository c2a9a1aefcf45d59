"""The runs REST API: queueing with validation, reading, listing, cancelling, deleting, advice."""

from __future__ import annotations

import pytest
from factories import LOCAL, add_run, config, health_without_workers, make_chunk, make_warning, write_stats
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from app.storage.models import RunWarning, StatBlock, StatChunk
from trainer import BATCH_COLUMNS, preset


def test_queued_run_stores_the_effective_config_of_preset_plus_overrides(client: TestClient) -> None:
    response = client.post(
        "/api/runs", json={"preset": "collapse-prone", "config": {"temperature": 3.0, "data": {"n_samples": 300}}}
    )
    assert response.status_code == 201, response.text
    run = response.json()
    expected = preset("collapse-prone").to_dict() | {"temperature": 3.0}
    expected["data"] = expected["data"] | {"n_samples": 300}
    assert run["config"] == expected
    assert run["status"] == "queued" and run["preset"] == "collapse-prone"
    assert run["name"] == f"collapse-prone #{run['id']}"
    assert run["columns"] == list(BATCH_COLUMNS)
    assert client.get(f"/api/runs/{run['id']}").json()["config"] == expected


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"config": {"temperature": 0}}, ["body", "config", "temperature"], "[0.05, 100.0]"),
        ({"config": {"data": {"n_samples": 3}}}, ["body", "config", "data", "n_samples"], "got 3"),
        ({"config": {"temprature": 5}}, ["body", "config", "temprature"], "unknown field"),
        ({"preset": "nope"}, ["body", "preset"], "unknown preset"),
        ({"dataset_id": 42}, ["body", "dataset_id"], "Dataset 42 not found"),
        ({"parent_id": 42}, ["body", "parent_id"], "Run 42 not found"),
    ],
)
def test_bad_run_is_a_422_naming_the_field_and_stores_nothing(
    client: TestClient, body: dict, loc: list, words: str
) -> None:
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [loc]
    assert words in errors[0]["msg"]
    assert client.get("/api/runs").json()["total"] == 0


def test_unknown_run_is_a_404_naming_it_on_every_route(client: TestClient) -> None:
    for method, url in [
        ("GET", "/api/runs/17"),
        ("GET", "/api/runs/17/stats"),
        ("GET", "/api/runs/17/evals"),
        ("GET", "/api/runs/17/warnings"),
        ("POST", "/api/runs/17/cancel"),
        ("DELETE", "/api/runs/17"),
        ("GET", "/api/runs/17/events"),
    ]:
        response = client.request(method, url)
        assert response.status_code == 404, (method, url)
        assert response.json() == {"detail": "Run 17 not found"}
    response = client.post("/api/runs/17/apply-advice", json={"warning_id": 1})
    assert response.json() == {"detail": "Run 17 not found"}


def test_list_filters_by_status_and_pages_newest_first(client: TestClient, engine: Engine) -> None:
    ids = [add_run(engine) for _ in range(3)]
    client.post(f"/api/runs/{ids[0]}/cancel")
    page = client.get("/api/runs", params={"limit": 1}).json()
    assert page["total"] == 3 and [r["id"] for r in page["items"]] == [ids[2]]
    queued = client.get("/api/runs", params={"status": "queued"}).json()
    assert {r["id"] for r in queued["items"]} == set(ids[1:]) and queued["total"] == 2
    assert client.get("/api/runs", params={"status": "lost"}).status_code == 422


def test_list_summary_carries_the_latest_values_and_warning_severity(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    write_stats(
        engine,
        run_id,
        [make_chunk(0, 30), make_chunk(30, 5, entropy_mean=0.25, onehot_frac=0.75)],
        warnings=(make_warning(12),),
    )
    (item,) = client.get("/api/runs").json()["items"]
    assert item["steps"] == 35
    assert item["latest"]["entropy_mean"] == 0.25 and item["latest"]["onehot_frac"] == 0.75
    assert set(item["latest"]) == {"entropy_mean", "onehot_frac", "hist_top_share", "loss", "target_entropy_mean"}
    assert item["warning_count"] == 1 and item["max_severity"] == "critical"


def test_cancel_of_a_queued_run_is_immediate(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    run = client.post(f"/api/runs/{run_id}/cancel").json()
    assert run["status"] == "cancelled" and run["finished_at"] is not None


def test_delete_removes_the_run_with_all_its_records(client: TestClient, engine: Engine) -> None:
    keep, gone = add_run(engine), add_run(engine)
    for run_id in (keep, gone):
        write_stats(engine, run_id, [make_chunk(0, 40)], warnings=(make_warning(),))
    assert client.delete(f"/api/runs/{gone}").status_code == 204
    assert client.get(f"/api/runs/{gone}").status_code == 404
    with Session(engine) as session:
        for table in (StatChunk, StatBlock, RunWarning):
            counts = dict(session.exec(select(table.run_id, func.count()).group_by(table.run_id)).all())
            assert gone not in counts and counts[keep] > 0, table.__name__
    assert client.get(f"/api/runs/{keep}/stats").json()["steps"] == list(range(40))


def test_apply_advice_queues_a_child_with_the_override(client: TestClient, engine: Engine) -> None:
    parent = client.post("/api/runs", json={"name": "base", "config": config(temperature=4.0)}).json()
    write_stats(engine, parent["id"], [], warnings=(make_warning(),))
    (warning,) = client.get(f"/api/runs/{parent['id']}/warnings").json()
    assert warning["advice"] == {"message": "Raise the temperature: 4 -> 5", "overrides": {"temperature": 5.0}}
    response = client.post(f"/api/runs/{parent['id']}/apply-advice", json={"warning_id": warning["id"]})
    assert response.status_code == 201, response.text
    child = response.json()
    assert child["parent_id"] == parent["id"] and child["status"] == "queued"
    assert child["name"] == "base + temperature=5.0"
    assert child["config"] == parent["config"] | {"temperature": 5.0}
    other = add_run(engine)
    missing = client.post(f"/api/runs/{other}/apply-advice", json={"warning_id": warning["id"]})
    assert missing.status_code == 404 and missing.json() == {"detail": f"Warning {warning['id']} not found"}


def test_presets_list_the_full_effective_configs(client: TestClient) -> None:
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert set(presets) >= {"fixed", "collapse-prone", "healthy"}
    assert presets["collapse-prone"]["config"] == preset("collapse-prone").to_dict()
    assert presets["fixed"]["description"]


def test_health_names_the_database(client: TestClient) -> None:
    assert client.get("/api/health").json() == health_without_workers("sqlite")


def test_unexpected_errors_are_json_500s_and_normal_errors_are_not(app: FastAPI, engine: Engine) -> None:
    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("disk on fire")

    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        response = client.get("/api/boom")
        assert response.status_code == 500
        body = response.json()
        # an id to find the details in the server log; never the exception's text (SQL, paths, parameters)
        assert body == {"detail": f"internal error {body['error_id']}: the server log has the details",
                        "error_id": body["error_id"]}  # fmt: skip
        assert "disk on fire" not in response.text and len(body["error_id"]) == 12
        assert client.get("/api/runs/5").status_code == 404
        assert client.post("/api/runs", json={"config": {"lr": -1}}).status_code == 422
        assert client.get("/api/runs", params={"limit": 0}).status_code == 422
