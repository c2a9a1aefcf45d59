"""The compare page's verdict table and the runs list's search, sort links, labels and actions, as parsed HTML."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

import pytest
from factories import add_run, make_eval, make_warning, write_stats
from fastapi.testclient import TestClient
from html_dom import Element, parse_html
from sqlalchemy import Engine
from sqlmodel import Session

from app.storage.models import Run


def page(client: TestClient, url: str, status: int = 200) -> Element:
    response = client.get(url)
    assert response.status_code == status, response.text[:500]
    return parse_html(response.text)


def evaluated_run(engine: Engine, name: str, warnings: int = 0, **metrics: float) -> int:
    run_id = add_run(engine)
    write_stats(
        engine, run_id, [], evals=(make_eval(7, **metrics),), warnings=tuple(make_warning() for _ in range(warnings))
    )
    with Session(engine) as session:
        run = session.get(Run, run_id)
        run.name, run.status = name, "completed"
        session.commit()
    return run_id


def table_cells(doc: Element) -> dict[int, dict[str, Element]]:
    """Per run id, per measure, the compare table's cell."""
    rows = doc.by_id("compare-table").find("tbody").find_all("tr")
    return {
        int(r.attrs["data-run-id"]): {c.attrs["data-measure"]: c for c in r.find_all("td") if "data-measure" in c.attrs}
        for r in rows
    }


def best(cell: Element) -> bool:
    return "best" in cell.attrs.get("class", "").split()


GOOD = dict(soft_ce=0.40, accuracy=0.90, ece=0.05, kl=0.10, entropy_mean=0.55, target_entropy_mean=0.50)
BAD = dict(soft_ce=0.80, accuracy=0.60, ece=0.20, kl=0.50, entropy_mean=1.50, target_entropy_mean=0.50)


# --- compare --------------------------------------------------------------------------------------------
def test_compare_tabulates_each_runs_last_evaluation_marks_the_best_and_names_the_better_run(
    client: TestClient, engine: Engine
) -> None:
    bad = evaluated_run(engine, "bad", warnings=2, **BAD)
    good = evaluated_run(engine, "good", **GOOD)
    doc = page(client, f"/compare?ids={bad},{good}")
    cells = table_cells(doc)
    assert float(cells[good]["soft_ce"].attrs["data-value"]) == 0.40
    assert float(cells[bad]["accuracy"].attrs["data-value"]) == 0.60
    assert math.isclose(float(cells[bad]["entropy_gap"].attrs["data-value"]), 1.0)
    assert all(best(c) for c in cells[good].values()) and not any(best(c) for c in cells[bad].values())
    verdict = doc.by_id("compare-verdict").text
    assert verdict.startswith(f"#{good} is better: it wins every measure that differs clearly"), verdict
    findings = {li.attrs["data-measure"]: li.text for li in doc.by_id("compare-findings").find_all("li")}
    assert findings["soft_ce"] == f"Val loss: #{good} is best, 0.4 against 0.8 for #{bad} (0.4 lower, 50%)."
    assert findings["accuracy"].endswith("(30.0 points higher).")
    warning_cells = {
        int(r.attrs["data-run-id"]): r.find("td", class_="warnings-cell")
        for r in doc.by_id("compare-table").find("tbody").find_all("tr")
    }
    assert best(warning_cells[good]) and warning_cells[bad].attrs["data-count"] == "2"
    assert "one_hot" in warning_cells[bad].text


def test_compare_calls_it_too_close_when_no_measure_differs_clearly(client: TestClient, engine: Engine) -> None:
    a = evaluated_run(engine, "a", **GOOD)
    b = evaluated_run(engine, "b", **{**GOOD, "soft_ce": 0.405, "accuracy": 0.895})
    doc = page(client, f"/compare?ids={a},{b}")
    assert doc.by_id("compare-verdict").text.startswith("Too close to call")
    cells = table_cells(doc)
    assert best(cells[a]["soft_ce"]) and not best(cells[b]["soft_ce"])
    assert not best(cells[a]["ece"]) and not best(cells[b]["ece"]), "where every run ties, none is marked"


def test_compare_with_split_wins_says_no_run_is_better_on_every_measure(client: TestClient, engine: Engine) -> None:
    a = evaluated_run(engine, "a", **GOOD)
    b = evaluated_run(engine, "b", **{**BAD, "accuracy": 0.99})
    verdict = page(client, f"/compare?ids={a},{b}").by_id("compare-verdict").text
    assert verdict.startswith("No run is better on every measure") and verdict.endswith(
        f"#{a} wins Val loss, ECE, KL(target ‖ pred) and Entropy vs target; #{b} wins Accuracy."
    )


def test_a_nan_metric_is_shown_as_such_and_never_best(client: TestClient, engine: Engine) -> None:
    a = evaluated_run(engine, "a", **GOOD)
    b = evaluated_run(engine, "diverged", **{**GOOD, "soft_ce": math.nan})
    doc = page(client, f"/compare?ids={a},{b}")
    cell = table_cells(doc)[b]["soft_ce"]
    assert cell.text.strip() == "NaN" and not best(cell) and "data-value" not in cell.attrs
    finding = doc.by_id("compare-findings").find("li", data_measure="soft_ce").text
    assert finding == f"Val loss: only #{a} has a finite value (#{b} NaN)."


def test_compare_warns_when_runs_are_unfinished_or_trained_on_different_data(
    client: TestClient, engine: Engine
) -> None:
    a = evaluated_run(engine, "a", **GOOD)
    b = add_run(engine, data={"n_samples": 256})  # queued, and on other data than a's
    caveats = [p.text for p in page(client, f"/compare?ids={a},{b}").find_all("p", class_="caveat")]
    assert caveats == [
        f"#{b} is not finished: values are from the latest evaluation so far (reload for newer).",
        "These runs trained on different data, so their validation sets differ: compare with care.",
    ]
    same = evaluated_run(engine, "same", **BAD)
    assert page(client, f"/compare?ids={a},{same}").find("p", class_="caveat") is None


def test_compare_offers_every_recorded_series(client: TestClient, engine: Engine) -> None:
    from trainer import BATCH_COLUMNS, EVAL_METRICS

    a, b = add_run(engine), add_run(engine)
    doc = page(client, f"/compare?ids={a},{b}")
    options = [o.attrs["value"] for o in doc.by_id("compare-series-select").find_all("option")]
    assert options == [f"batch:{c}" for c in BATCH_COLUMNS] + [f"eval:{m}" for m in EVAL_METRICS]
    assert doc.by_id("compare-verdict").text.startswith("No run has been evaluated yet")
    for chart in ("compare-series", "compare-logits", "compare-grad"):
        assert doc.by_id(chart) is not None


# --- runs list ------------------------------------------------------------------------------------------
def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_runs_list_headers_sort_in_the_database_and_keep_the_search(client: TestClient, engine: Engine) -> None:
    evaluated_run(engine, "good run", **GOOD)
    evaluated_run(engine, "bad run", **BAD)
    evaluated_run(engine, "other", **GOOD)
    doc = page(client, "/?q=run&sort=val_loss&order=asc")
    assert [r.attrs["data-name"] for r in doc.by_id("runs-body").find_all("tr")] == ["good run", "bad run"]
    assert doc.by_id("runs-search").attrs["value"] == "run"
    headers = {a.attrs["data-sort"]: a for a in doc.by_id("runs-table").find("thead").find_all("a")}
    assert _query(headers["val_loss"].attrs["href"]) == {"q": ["run"], "sort": ["val_loss"], "order": ["desc"]}
    assert _query(headers["accuracy"].attrs["href"])["order"] == ["desc"], "a first click puts the best first"
    sorted_th = [th for th in doc.by_id("runs-table").find("thead").find_all("th") if "aria-sort" in th.attrs]
    assert [th.attrs["aria-sort"] for th in sorted_th] == ["ascending"]
    rows_url = doc.by_id("runs-table").attrs["data-rows-url"]
    assert _query(rows_url) == {"q": ["run"], "sort": ["val_loss"], "order": ["asc"], "offset": ["0"]}
    partial = parse_html(client.get(rows_url).text)
    assert [r.attrs["data-name"] for r in partial.by_id("runs-body").find_all("tr")] == ["good run", "bad run"]
    assert "2 runs match" in doc.by_id("runs-count").text


def test_runs_list_rows_show_final_metrics_duration_tags_notes_and_actions(client: TestClient, engine: Engine) -> None:
    run_id = evaluated_run(engine, "labelled", **GOOD)
    client.patch(f"/api/runs/{run_id}", json={"tags": ["sweep"], "notes": "best so far"})
    with Session(engine) as session:
        session.get(Run, run_id).duration_s = 75.0
        session.commit()
    (row,) = page(client, "/").by_id("runs-body").find_all("tr")
    by_label = {td.attrs.get("data-label"): td for td in row.find_all("td")}
    assert by_label["Val loss"].text.strip() == "0.4" and by_label["Accuracy"].text.strip() == "0.9"
    assert by_label["Duration"].text.strip() == "1 min 15 s"
    (tag,) = row.find_all("a", class_="tag")
    assert tag.text == "sweep" and _query(tag.attrs["href"]) == {"tag": ["sweep"]}
    assert row.find("p", class_="notes").text == "best so far"
    assert row.find("a", class_="csv").attrs["href"].endswith(f"/api/runs/{run_id}/stats.csv")
    assert row.attrs["data-api-url"].endswith(f"/api/runs/{run_id}")
    assert row.find("button", class_="delete") is not None and row.find("button", class_="edit") is not None
    assert page(client, "/?tag=sweep").by_id("runs-body").find("tr").attrs["data-name"] == "labelled"
    assert page(client, "/?tag=other").by_id("runs-body").find("tr", class_="empty") is not None


@pytest.mark.parametrize("query", ["sort=nope", "order=up", f"q={'x' * 201}", "status=done"])
def test_runs_list_with_a_bad_query_is_its_422_page(client: TestClient, query: str) -> None:
    doc = page(client, f"/?{query}", status=422)
    assert doc.find("h1").text in ("Bad list query",)
