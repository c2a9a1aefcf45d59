"""The runs list API (search, tag filter, sort in the database, paging), labels (PATCH name, tags, notes)
and the CSV export of a run's statistics."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from factories import LOCAL, add_run, make_chunk, make_eval, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from app.core.config import Settings
from app.main import create_app
from app.storage import export
from app.storage.engine import init_db
from app.storage.models import Run
from trainer import BATCH_COLUMNS


def names(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/api/runs?{query}")
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["items"]]


def patch(client: TestClient, run_id: int, body: dict) -> dict:
    response = client.patch(f"/api/runs/{run_id}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def named_run(client: TestClient, name: str) -> int:
    response = client.post("/api/runs", json={"name": name, "config": {"epochs": 1}})
    assert response.status_code == 201, response.text
    return response.json()["id"]


# --- search and filters -------------------------------------------------------------------------------
def test_search_matches_part_of_a_name_tag_or_notes_in_any_case_and_counts_only_matches(client: TestClient) -> None:
    _, b, _ = (named_run(client, n) for n in ("Baseline lr 0.1", "smoothing 50%", "other"))
    patch(client, b, {"tags": ["sweep-7"], "notes": "Deployed at T = 1"})
    assert names(client, "q=baseLINE") == ["Baseline lr 0.1"]
    assert names(client, "q=SWEEP") == ["smoothing 50%"]
    assert names(client, "q=deployed") == ["smoothing 50%"]
    # LIKE's wildcards are plain characters in a search
    assert names(client, "q=50%25") == ["smoothing 50%"] and names(client, "q=_") == []
    page = client.get("/api/runs?q=e&limit=1").json()
    assert page["total"] == 3 and len(page["items"]) == 1
    assert client.get(f"/api/runs?q={'x' * 201}").status_code == 422


def test_tag_filter_matches_whole_tags_only(client: TestClient) -> None:
    a, b = named_run(client, "a"), named_run(client, "b")
    patch(client, a, {"tags": ["sweep", "lr:0.1"]})
    patch(client, b, {"tags": ["sweep-2"]})
    assert names(client, "tag=sweep") == ["a"]
    assert names(client, "tag=sweep-2") == ["b"]
    assert names(client, "tag=lr:0.1") == ["a"] and names(client, "tag=swe") == []


# --- sorting --------------------------------------------------------------------------------------------
@pytest.fixture
def evaluated(client: TestClient, engine: Engine) -> dict[str, int]:
    """Four runs: three with a last evaluation (one with a NaN loss), one never evaluated."""
    runs = {name: add_run(engine) for name in ("good", "bad", "nan", "none")}
    last = {"good": dict(soft_ce=0.4, accuracy=0.9), "bad": dict(soft_ce=0.9, accuracy=0.6),
            "nan": dict(soft_ce=math.nan, accuracy=0.7)}  # fmt: skip
    for name, metrics in last.items():
        # an earlier evaluation with the opposite order: only the last one counts
        write_stats(
            engine, runs[name], [], evals=(make_eval(0, soft_ce=2 - metrics["accuracy"]), make_eval(5, **metrics))
        )
    with Session(engine) as session:
        for seconds, name in enumerate(("none", "good", "nan", "bad"), 1):
            run = session.get(Run, runs[name])
            run.name, run.duration_s = name, float(seconds)
        session.commit()
    return runs


def test_sort_by_a_final_metric_puts_runs_without_a_finite_value_last_either_way(
    client: TestClient, evaluated: dict[str, int]
) -> None:
    assert names(client, "sort=val_loss&order=asc") == ["good", "bad", "none", "nan"]
    assert names(client, "sort=val_loss&order=desc") == ["bad", "good", "none", "nan"]
    assert names(client, "sort=accuracy&order=desc") == ["good", "nan", "bad", "none"]
    item = client.get("/api/runs?sort=val_loss&order=asc").json()["items"][0]
    assert item["final_eval"]["metrics"]["soft_ce"] == 0.4 and item["final_eval"]["step"] == 5
    nan_run = client.get("/api/runs?sort=val_loss&order=asc").json()["items"][-1]
    assert nan_run["final_eval"]["nonfinite"] == {"soft_ce": "NaN"}


def test_sort_by_name_duration_and_pages_that_never_overlap(client: TestClient, evaluated: dict[str, int]) -> None:
    assert names(client, "sort=name&order=asc") == ["bad", "good", "nan", "none"]
    assert names(client, "sort=duration&order=desc") == ["bad", "nan", "good", "none"]
    assert client.get("/api/runs?limit=1").json()["items"][0]["duration_s"] == 1.0
    pages = [names(client, f"sort=steps&order=asc&limit=1&offset={i}") for i in range(4)]  # every steps value ties
    assert sorted(name for names_on_page in pages for name in names_on_page) == ["bad", "good", "nan", "none"]
    assert client.get("/api/runs?sort=nope").status_code == 422
    assert client.get("/api/runs?order=up").status_code == 422


# --- PATCH ----------------------------------------------------------------------------------------------
def test_patch_renames_tags_and_notes_a_run_and_leaves_what_it_does_not_name(client: TestClient) -> None:
    run_id = named_run(client, "before")
    changed = patch(client, run_id, {"name": "  after  ", "tags": ["b", "a", "b"], "notes": "line 1\nline 2\ttab"})
    assert (changed["name"], changed["tags"], changed["notes"]) == ("after", ["b", "a"], "line 1\nline 2\ttab")
    assert patch(client, run_id, {"notes": ""})["name"] == "after"
    stored = client.get(f"/api/runs/{run_id}").json()
    assert (stored["name"], stored["tags"], stored["notes"]) == ("after", ["b", "a"], "")
    assert client.get("/api/runs").json()["items"][0]["tags"] == ["b", "a"]
    assert patch(client, run_id, {"tags": []})["tags"] == []


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"name": ""}, ["body", "name"], "at least 1"),
        ({"name": "   "}, ["body", "name"], "must not be blank"),
        ({"name": "x" * 201}, ["body", "name"], "at most 200"),
        ({"name": "a\x00b"}, ["body", "name"], "control character"),
        ({"tags": ["has space"]}, ["body", "tags"], "a tag is 1 to 40"),
        ({"tags": ["x" * 41]}, ["body", "tags"], "a tag is 1 to 40"),
        ({"tags": [f"t{i}" for i in range(21)]}, ["body", "tags"], "at most 20"),
        ({"notes": "n" * 5001}, ["body", "notes"], "at most 5000"),
        ({"notes": "bell\x07"}, ["body", "notes"], "control character"),
        ({"nmae": "typo"}, ["body", "nmae"], "did you mean 'name'"),
        ({"status": "completed"}, ["body", "status"], "unknown field"),
    ],
)
def test_a_bad_patch_is_a_422_naming_the_field_and_changes_nothing(
    client: TestClient, body: dict, loc: list, words: str
) -> None:
    run_id = named_run(client, "kept")
    response = client.patch(f"/api/runs/{run_id}", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and words in error["msg"], error
    stored = client.get(f"/api/runs/{run_id}").json()
    assert (stored["name"], stored["tags"], stored["notes"], stored["status"]) == ("kept", [], "", "queued")


def test_patch_of_a_missing_run_is_a_404_naming_it(client: TestClient) -> None:
    response = client.patch("/api/runs/17", json={"name": "x"})
    assert response.status_code == 404 and response.json()["detail"] == "Run 17 not found"


def test_a_browser_patch_needs_the_pages_csrf_token(client: TestClient) -> None:
    run_id = named_run(client, "a")
    response = client.patch(f"/api/runs/{run_id}", json={"name": "b"}, headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert client.get(f"/api/runs/{run_id}").json()["name"] == "a"


def test_a_database_from_before_labels_gets_the_columns_and_its_runs_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = create_app(Settings(database_url=url, data_dir=tmp_path / "data", workers=0))
    with TestClient(first, base_url=LOCAL) as client:
        run_id = named_run(client, "old")
    with first.state.engine.begin() as conn:  # the schema of the version before tags and notes
        conn.execute(text("ALTER TABLE run DROP COLUMN tags"))
        conn.execute(text("ALTER TABLE run DROP COLUMN notes"))
    first.state.engine.dispose()
    app = create_app(Settings(database_url=url, data_dir=tmp_path / "data", workers=0))
    with TestClient(app, base_url=LOCAL) as client:
        (item,) = client.get("/api/runs").json()["items"]
        assert (item["name"], item["tags"], item["notes"]) == ("old", [], "")
        assert patch(client, run_id, {"tags": ["kept"]})["tags"] == ["kept"]
        assert names(client, "tag=kept") == ["old"]
    assert init_db(app.state.engine) == []


# --- CSV export -----------------------------------------------------------------------------------------
def test_csv_export_has_every_recorded_batch_and_column_with_nan_as_nan(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "CHUNKS_PER_READ", 1)  # several reads, so paging is exercised
    run_id = add_run(engine)
    chunks = [make_chunk(0, 1500, loss=0.5), make_chunk(1500, 700)]
    chunks[0].values[3, BATCH_COLUMNS.index("grad_norm")] = np.nan
    chunks[1].values[10, BATCH_COLUMNS.index("logit_max")] = np.inf
    write_stats(engine, run_id, chunks)
    response = client.get(f"/api/runs/{run_id}/stats.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f"run-{run_id}-stats.csv" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    header, body = rows[0], rows[1:]
    assert header == ["step", "epoch", *BATCH_COLUMNS, *(f"class_share_{c}" for c in range(8))]
    assert [int(r[0]) for r in body] == list(range(2200)), "every batch once, in order"
    col = {name: i for i, name in enumerate(header)}
    assert body[3][col["grad_norm"]] == "NaN" and body[1510][col["logit_max"]] == "inf"
    assert {r[col["loss"]] for r in body[:1500]} == {"0.5"}
    expected = chunks[1].values[5, BATCH_COLUMNS.index("entropy_mean")]
    assert float(body[1505][col["entropy_mean"]]) == expected, "full precision"
    shares = [float(v) for v in body[0][col["class_share_0"] :]]
    assert abs(sum(shares) - 1) < 1e-4


def test_csv_export_of_a_run_without_batches_is_its_header_and_of_a_missing_run_a_404(
    client: TestClient, engine: Engine
) -> None:
    run_id = add_run(engine)
    assert client.get(f"/api/runs/{run_id}/stats.csv").text.splitlines() == [
        ",".join(["step", "epoch", *BATCH_COLUMNS, *(f"class_share_{c}" for c in range(8))])
    ]
    response = client.get("/api/runs/17/stats.csv")
    assert response.status_code == 404 and response.json()["detail"] == "Run 17 not found"
