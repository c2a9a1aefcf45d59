"""Doctor mode on the pages, read as parsed HTML: the run form's checkbox and max attempts (bad input named,
nothing queued), and the lineage in the run header, from the first attempt to its verdict. With the real
tuning ladder, a "too uniform" overshoot stops the run and the doctor tries the step back.

The app runs without its lifespan, so the doctor moves only when the test calls treat_runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from factories import LOCAL, TINY, make_chunk, make_warning, write_stats
from fastapi.testclient import TestClient
from html_dom import Element, parse_html
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from app.core.config import Settings
from app.main import create_app
from app.storage.models import Run
from app.worker.doctor import treat_runs
from trainer import CollapseWarning, from_dict
from trainer.advice import advise


@pytest.fixture
def offline(settings: Settings) -> Iterator[tuple[TestClient, Engine]]:
    app = create_app(settings)
    try:
        yield TestClient(app, base_url=LOCAL), app.state.engine
    finally:
        app.state.engine.dispose()


def page(client: TestClient, url: str, status: int = 200) -> Element:
    response = client.get(url)
    assert response.status_code == status, response.text[:500]
    return parse_html(response.text)


def submit(client: TestClient, form: dict[str, str], **kwargs: Any) -> Any:
    token = page(client, "/runs/new").find("input", name="csrf_token").attrs["value"]
    return client.post("/runs/new", data={**form, "csrf_token": token}, **kwargs)


def _set(engine: Engine, run_id: int, **values: Any) -> None:
    with Session(engine) as session:
        session.exec(update(Run).where(col(Run.id) == run_id).values(**values))
        session.commit()


def _warn_and_stop(engine: Engine, run_id: int, warning: CollapseWarning) -> None:
    """What a worker does with a doctored run that warns: records the warning, obeys the stop; then the
    doctor concludes it."""
    _set(engine, run_id, status="running")
    write_stats(engine, run_id, [make_chunk(0, 20)], warnings=(warning,))
    assert treat_runs(engine) == 1  # asked to stop
    _set(engine, run_id, status="cancelled")
    assert treat_runs(engine) == 1  # concluded: the next attempt queued, or the verdict


def _attempts(doc: Element) -> list[Element]:
    return doc.by_id("doctor").find_all("li", class_="attempt")


# --- the run form ---------------------------------------------------------------------------------------------
def test_the_run_form_queues_a_doctored_run_with_its_max_attempts(offline: tuple[TestClient, Engine]) -> None:
    client, _ = offline
    doc = page(client, "/runs/new")
    box = doc.by_id("doctor")
    assert box.attrs["type"] == "checkbox" and "checked" not in box.attrs
    assert doc.by_id("doctor_max_attempts").attrs["value"] == "4"  # the API's default
    assert "Allowed: 1 to 10" in doc.by_id("doctor_max_attempts-help").text

    doctored = submit(client, {"preset": "fixed", "epochs": "1", "doctor": "on", "doctor_max_attempts": "3"},
                      follow_redirects=False)  # fmt: skip
    plain = submit(client, {"preset": "fixed", "epochs": "1", "doctor_max_attempts": "3"}, follow_redirects=False)
    assert doctored.status_code == plain.status_code == 303
    run = client.get(f"/api/runs/{doctored.headers['location'].rsplit('/', 1)[1]}").json()
    assert (run["doctor_attempt"], run["doctor_max"], run["doctor_state"]) == (1, 3, "watching")
    other = client.get(f"/api/runs/{plain.headers['location'].rsplit('/', 1)[1]}").json()
    assert other["doctor_attempt"] is None and other["doctor_state"] is None


@pytest.mark.parametrize(("typed", "words"), [("11", "from 1 to 10, got '11'"), ("two", "got 'two'"), ("0", "got '0'")])
def test_bad_max_attempts_re_render_the_form_naming_the_field(
    offline: tuple[TestClient, Engine], typed: str, words: str
) -> None:
    client, _ = offline
    response = submit(client, {"preset": "fixed", "doctor": "on", "doctor_max_attempts": typed})
    assert response.status_code == 422
    doc = parse_html(response.text)
    assert words in doc.by_id("doctor_max_attempts-error").text
    assert doc.by_id("form-errors").find("a", href="#doctor_max_attempts") is not None
    assert "checked" in doc.by_id("doctor").attrs and doc.by_id("doctor_max_attempts").attrs["value"] == typed
    assert client.get("/api/runs").json()["total"] == 0


# --- the lineage on the run page -----------------------------------------------------------------------------
def test_the_run_page_shows_the_doctors_lineage_from_first_attempt_to_verdict(
    offline: tuple[TestClient, Engine],
) -> None:
    client, engine = offline
    plain = client.post("/api/runs", json={"config": TINY}).json()
    plain_page = page(client, f"/runs/{plain['id']}")
    assert plain_page.find(id="doctor") is None
    assert not [s for s in plain_page.find_all("script") if "doctor_tree.js" in s.attrs.get("src", "")]

    body = {"preset": "collapse-prone", "config": TINY, "doctor": True, "doctor_max_attempts": 3}
    first = client.post("/api/runs", json=body).json()
    doc = page(client, f"/runs/{first['id']}")
    assert doc.by_id("doctor").attrs["data-state"] == "in progress"
    assert [s for s in doc.find_all("script") if "doctor_tree.js" in s.attrs.get("src", "")]
    (only,) = _attempts(doc)
    assert "the doctor watches this attempt (queued)" in only.find("p", class_="outcome").text

    _warn_and_stop(engine, first["id"], make_warning())  # critical one_hot, advice: temperature 5
    child_id = client.get(f"/api/runs/{first['id']}").json()["doctor_outcome"].rsplit("#", 1)[1]
    doc = page(client, f"/runs/{first['id']}/header")  # what the page refreshes
    parent, child = _attempts(doc)
    assert "current" in parent.attrs["class"] and parent.attrs["data-run-id"] == str(first["id"])
    assert parent.find("p", class_="warned").text == "Warnings: critical one_hot from step 10"
    assert parent.find("p", class_="outcome").text.endswith(f"queued attempt 2: run #{child_id}")
    assert child.attrs["data-run-id"] == child_id
    assert child.find("span", class_="change").text == "temperature 2.0 → 5.0"  # collapse-prone's T, then the advice's
    assert "2 of at most 3 attempts" in doc.by_id("doctor").find("p", class_="doctor-result").text

    _set(engine, int(child_id), status="completed")  # trained without a warning
    assert treat_runs(engine) == 1
    doc = page(client, f"/runs/{child_id}")
    assert doc.by_id("doctor").attrs["data-state"] == "healthy"
    assert "current" in _attempts(doc)[1].attrs["class"]
    result = doc.by_id("doctor").find("p", class_="doctor-result").text
    assert result.startswith(f"run #{child_id} finished healthy after 2 attempt(s)")


def test_a_too_uniform_overshoot_stops_the_run_and_the_doctor_steps_back(offline: tuple[TestClient, Engine]) -> None:
    """The real ladder: one_hot raises label smoothing 0.15 -> 0.2; the child overshoots (too uniform), is
    stopped, and its advice steps smoothing back down past the parent's 0.15 to 0.05, a config not yet tried."""
    client, engine = offline
    config = {**TINY, "temperature": 1.0, "cap_entropy_at_target": True}
    first = client.post("/api/runs", json={"preset": "fixed", "config": config, "doctor": True}).json()
    base = from_dict(first["config"])
    advice = advise("one_hot", base)
    raise_it = CollapseWarning("one_hot", "critical", 30, "one-hot", {"onehot_frac": 0.6}, advice=advice)
    assert raise_it.advice.overrides == {"label_smoothing": 0.2}
    _warn_and_stop(engine, first["id"], raise_it)
    child_id = int(client.get(f"/api/runs/{first['id']}").json()["doctor_outcome"].rsplit("#", 1)[1])

    child = from_dict(client.get(f"/api/runs/{child_id}").json()["config"])
    overshoot = CollapseWarning("too_uniform", "warning", 40, "too uniform", {"entropy_mean": 1.9},
                                advice=advise("too_uniform", child))  # fmt: skip
    _warn_and_stop(engine, child_id, overshoot)
    lineage = client.get(f"/api/runs/{child_id}/doctor").json()
    assert [a["status"] for a in lineage["attempts"]] == ["cancelled", "cancelled", "queued"]  # the overshoot stopped
    assert lineage["attempts"][1]["outcome"].startswith("too_uniform: Predictions pushed towards uniform: lower label")
    assert lineage["attempts"][2]["changed"] == {"label_smoothing": 0.05}
    third = _attempts(page(client, f"/runs/{child_id}"))[2]
    assert third.find("span", class_="change").text == "label_smoothing 0.2 → 0.05"
