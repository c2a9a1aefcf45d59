"""The sweep pages through TestClient, read as parsed HTML: the list, the new-sweep form (bad input re-renders
naming the input, nothing stored), the sweep page and its live part, and a trial's run linking to its sweep.

The app runs without its lifespan, so no background driver races the test: each test drives its sweep itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from factories import LOCAL, TINY, make_eval, write_stats
from fastapi.testclient import TestClient
from html_dom import Element, parse_html
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from app.core.config import Settings
from app.main import create_app
from app.pages.sweeps_form import KINDS
from app.storage.models import Run
from app.storage.sweep_models import OBJECTIVES
from app.sweeps.driver import drive_sweep
from app.sweeps.storage import optuna_storage, release_storage
from trainer import CollapseWarning

SPACE = {"lr": {"low": 0.001, "high": 0.1, "log": True}, "entropy_penalty": {"choices": ["linear", "quadratic"]}}
GOOD_FORM = {
    "name": "form sweep", "preset": "fixed", "config": "epochs = 1\nhidden_sizes = [16]\n[data]\nn_samples = 128\n",
    "sampler": "random", "n_trials": "4", "parallelism": "2", "objective": "accuracy", "seed": "3",
    "space_field": ["lr", "entropy_penalty", ""], "space_kind": ["log", "choices", "range"],
    "space_low": ["0.001", "", ""], "space_high": ["0.3", "", ""], "space_step": ["", "", ""],
    "space_choices": ["", "linear, quadratic", ""],
}  # fmt: skip


@pytest.fixture
def offline(settings: Settings) -> Iterator[tuple[TestClient, Engine]]:
    app = create_app(settings)  # no lifespan: no sweep driver, no doctor, no reaper in the background
    try:
        yield TestClient(app, base_url=LOCAL), app.state.engine
    finally:
        release_storage(settings.database_url)
        app.state.engine.dispose()


def page(client: TestClient, url: str, status: int = 200) -> Element:
    response = client.get(url)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    return parse_html(response.text)


def submit(client: TestClient, form: dict[str, Any], **kwargs: Any) -> Any:
    token = page(client, "/sweeps/new").find("input", name="csrf_token").attrs["value"]
    return client.post("/sweeps/new", data={**form, "csrf_token": token}, **kwargs)


def _set(engine: Engine, run_id: int, **values: Any) -> None:
    with Session(engine) as session:
        session.exec(update(Run).where(col(Run.id) == run_id).values(**values))
        session.commit()


def _options(select: Element) -> list[str]:
    return [o.attrs["value"] for o in select.find_all("option")]


# --- list and form ------------------------------------------------------------------------------------------
def test_the_nav_links_the_sweeps_list_which_offers_a_new_sweep(offline: tuple[TestClient, Engine]) -> None:
    client, _ = offline
    nav = page(client, "/").find("nav")
    assert "/sweeps" in [a.attrs["href"].removeprefix(LOCAL) for a in nav.find_all("a")]
    doc = page(client, "/sweeps")
    assert doc.by_id("sweeps-body").find("tr", class_="empty") is not None
    assert doc.find("a", href=f"{LOCAL}/sweeps/new") is not None


def test_the_form_offers_the_fields_samplers_and_objectives_the_api_takes(offline: tuple[TestClient, Engine]) -> None:
    client, _ = offline
    doc = page(client, "/sweeps/new")
    fields = _options(doc.by_id("space-1-field"))
    assert {"lr", "temperature", "entropy_penalty", "data.imbalance"} <= set(fields)
    assert not {"device", "data.path", "data.kind"} & set(fields), "fields a sweep refuses are not offered"
    assert _options(doc.by_id("space-1-kind")) == list(KINDS)
    assert _options(doc.by_id("sampler")) == ["grid", "random", "tpe"]
    assert _options(doc.by_id("objective")) == list(OBJECTIVES)
    assert doc.by_id("space-row-template").tag == "template"


def test_a_sweep_from_the_form_is_queued_exactly_as_typed(offline: tuple[TestClient, Engine]) -> None:
    client, _ = offline
    response = submit(client, GOOD_FORM, follow_redirects=False)
    assert response.status_code == 303, response.text[:2000]
    sweep_id = int(response.headers["location"].rsplit("/", 1)[1])
    sweep = client.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["search_space"] == {
        "lr": {"low": 0.001, "high": 0.3, "log": True, "step": None, "int": False},
        "entropy_penalty": {"choices": ["linear", "quadratic"]},
    }
    assert (sweep["name"], sweep["sampler"], sweep["n_trials"], sweep["parallelism"]) == ("form sweep", "random", 4, 2)
    assert (sweep["objective"], sweep["direction"], sweep["seed"]) == ("accuracy", "maximize", 3)
    assert sweep["config"]["epochs"] == 1 and sweep["config"]["data"]["n_samples"] == 128


@pytest.mark.parametrize(
    ("changes", "where", "words"),
    [
        ({"space_low": ["0", "", ""]}, "space-1-error", "a log scale needs a positive range"),
        ({"space_high": ["lots", "", ""]}, "space-1-error", "high: must be a number, got 'lots'"),
        ({"space_choices": ["", "linear, cubic", ""]}, "space-2-error", "cubic"),
        ({"space_field": ["lr", "lr", ""]}, "space-2-error", "lr is already searched in row 1"),
        ({"space_field": ["", "", ""]}, "space-1-error", "pick the config field this row searches"),
        ({"sampler": "grid"}, "space-1-error", 'a grid sweep needs choices, or a range with a "step"'),
        ({"config": "epochs = 0"}, "config-error", "epochs: must be in [1, 10000]"),
        ({"config": "epochs = "}, "config-error", "is neither TOML nor a JSON object"),
        ({"config": '{"data": {"path": "/etc/passwd"}}'}, "config-error", "a sweep trains on the built-in data"),
        ({"n_trials": "501"}, "n_trials-error", "less than or equal to 500"),
        ({"n_trials": "four"}, "n_trials-error", "must be a whole number, got 'four'"),
        ({"parallelism": "0"}, "parallelism-error", "greater than or equal to 1"),
        ({"preset": "nope"}, "preset-error", "known presets: fixed"),
        ({"objective": "loss"}, "objective-error", "'val_kl', 'accuracy' or 'ece'"),
    ],
)
def test_bad_input_re_renders_the_form_naming_the_input(
    offline: tuple[TestClient, Engine], changes: dict[str, Any], where: str, words: str
) -> None:
    client, _ = offline
    form = {**GOOD_FORM, **changes}
    response = submit(client, form)
    assert response.status_code == 422, response.text[:500]
    doc = parse_html(response.text)
    assert words in doc.by_id(where).text, doc.by_id(where).text
    assert doc.by_id("form-errors").find("li") is not None
    assert client.get("/api/sweeps").json() == [], "nothing is stored"
    # what was typed is shown again
    assert "".join(c for c in doc.by_id("config").children if isinstance(c, str)) == form["config"]
    assert doc.by_id("space-1-low").attrs["value"] == form["space_low"][0]


def test_a_form_without_its_csrf_token_is_refused(offline: tuple[TestClient, Engine]) -> None:
    client, _ = offline
    response = client.post("/sweeps/new", data=GOOD_FORM)
    assert response.status_code == 403 and "CSRF" in parse_html(response.text).by_id("not-found").text
    assert client.get("/api/sweeps").json() == []


@pytest.mark.parametrize("url", ["/sweeps/99", "/sweeps/abc", "/sweeps/0", "/sweeps/99/live"])
def test_a_missing_sweep_is_a_404_naming_it(offline: tuple[TestClient, Engine], url: str) -> None:
    client, _ = offline
    shown = url.split("/")[2]
    assert page(client, url, 404).find("h1").text == f"Sweep {shown} not found"


# --- the sweep page -------------------------------------------------------------------------------------------
def _three_trials(client: TestClient, engine: Engine, settings: Settings) -> tuple[dict[str, Any], list[int]]:
    """A sweep of three trials: 0 collapsed (lower objective), 1 the best, 2 still running."""
    body = {"config": TINY, "search_space": SPACE, "sampler": "random", "n_trials": 3, "parallelism": 3}
    sweep = client.post("/api/sweeps", json=body).json()
    drive_sweep(engine, optuna_storage(settings.database_url), sweep["id"])
    runs = [t["run_id"] for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]]
    collapsing = CollapseWarning("dominant_class", "warning", 3, "one class", {"hist_top_share": 0.9})
    write_stats(engine, runs[0], [], evals=(make_eval(4, kl=0.1),), warnings=(collapsing,))
    write_stats(engine, runs[1], [], evals=(make_eval(4, kl=0.5),))
    for run_id, status in zip(runs, ("completed", "completed", "running"), strict=True):
        _set(engine, run_id, status=status)
    return sweep, runs


def _rows(doc: Element) -> dict[int, Element]:
    return {int(r.attrs["data-trial"]): r for r in doc.by_id("trials-body").find_all("tr")}


def test_the_sweep_page_shows_trials_best_and_charts_data_while_it_runs(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    sweep, runs = _three_trials(client, engine, settings)
    doc = page(client, f"/sweeps/{sweep['id']}")
    head = doc.by_id("sweep-head")
    assert head.attrs["data-live"] == "true" and head.find(class_="status-running") is not None
    assert head.find("dd", data_field="trials").text == "2 of 3 ended, 1 running"
    assert head.find("dd", data_field="best").text == "0.5 · trial 1"  # not the collapsed trial's lower 0.1
    cancel = doc.by_id("cancel-sweep")
    assert cancel.attrs["data-cancel-url"] == f"{LOCAL}/api/sweeps/{sweep['id']}/cancel"
    assert doc.by_id("csv-link").attrs["href"] == f"{LOCAL}/api/sweeps/{sweep['id']}/trials.csv"

    rows = _rows(doc)
    assert [rows[n].attrs["data-status"] for n in range(3)] == ["completed", "completed", "running"]
    assert rows[0].find(class_="collapsed") is not None and rows[1].find(class_="collapsed") is None
    assert "best" in rows[1].attrs.get("class", "") and rows[1].find("td", data_label="val_kl").text == "0.5"
    assert rows[2].find("a").attrs["href"] == f"{LOCAL}/runs/{runs[2]}"
    lr = client.get(f"/api/runs/{runs[1]}").json()["config"]["lr"]
    assert f"lr {lr:.4g}" in rows[1].find("td", data_label="Params").text

    data = json.loads("".join(c for c in doc.by_id("sweep-data").children if isinstance(c, str)))
    assert [t["run_id"] for t in data["trials"]] == runs and data["best_run_id"] == runs[1]
    assert set(data["search_space"]) == {"lr", "entropy_penalty"} and data["objective"] == "val_kl"
    for chart in ("chart-objective", "chart-parallel", "chart-collapse"):
        assert doc.by_id(chart).tag == "div"
    assert _options(doc.by_id("heat-x")) == ["lr", "entropy_penalty"]
    assert _options(doc.by_id("heat-y")) == ["", "lr", "entropy_penalty"]

    # the live part the page polls renders the same head and table
    live = page(client, f"/sweeps/{sweep['id']}/live")
    assert live.by_id("sweep-head").attrs["data-live"] == "true" and set(_rows(live)) == {0, 1, 2}


def test_queue_it_again_and_apply_its_config_take_the_best_trials_config(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    sweep, runs = _three_trials(client, engine, settings)
    best = page(client, f"/sweeps/{sweep['id']}").by_id("best-trial")
    button = best.by_id("queue-again")
    response = client.post(button.attrs["data-url"], json=json.loads(button.attrs["data-body"]))
    assert response.status_code == 201, response.text
    again, trained = response.json(), client.get(f"/api/runs/{runs[1]}").json()
    assert again["parent_id"] == runs[1] and again["config"] == trained["config"]
    assert again["name"] == f"sweep #{sweep['id']}: trial 1 again"

    form = page(client, best.by_id("apply-config").attrs["href"].removeprefix(LOCAL))
    assert float(form.by_id("lr").attrs["value"]) == trained["config"]["lr"]
    assert form.find("input", name="parent_id").attrs["value"] == str(runs[1])


def test_an_ended_sweep_stops_polling_and_shows_a_pruned_trials_reason(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    sweep, runs = _three_trials(client, engine, settings)
    _set(engine, runs[2], status="cancelled", error="pruned: critical collapse warning: one_hot at step 70")
    drive_sweep(engine, optuna_storage(settings.database_url), sweep["id"])
    doc = page(client, f"/sweeps/{sweep['id']}")
    head = doc.by_id("sweep-head")
    assert head.attrs["data-live"] == "false" and head.find(class_="status-completed") is not None
    assert head.find(id="cancel-sweep") is None
    pruned = _rows(doc)[2]
    assert pruned.attrs["data-status"] == "pruned"
    assert pruned.find(data_field="pruned-reason").text == "critical collapse warning: one_hot at step 70"

    listed = page(client, "/sweeps").by_id("sweeps-body").find("tr", data_sweep_id=str(sweep["id"]))
    assert listed.find("td", data_label="Trials").text == "3 / 3"
    assert listed.find("td", data_label="Best").find("a").attrs["href"] == f"{LOCAL}/runs/{runs[1]}"


def test_a_trials_run_links_to_its_sweep_in_its_header_and_the_runs_list(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    sweep, runs = _three_trials(client, engine, settings)
    plain = client.post("/api/runs", json={"config": TINY}).json()
    sweep_url = f"{LOCAL}/sweeps/{sweep['id']}"
    link = page(client, f"/runs/{runs[2]}").by_id("run-sweep")
    assert link.find("a").attrs["href"] == sweep_url and link.text.endswith("trial 2")
    assert page(client, f"/runs/{runs[2]}/header").by_id("run-sweep").find("a").attrs["href"] == sweep_url
    assert page(client, f"/runs/{plain['id']}").find(id="run-sweep") is None
    rows = {r.attrs["data-run-id"]: r for r in page(client, "/").by_id("runs-body").find_all("tr")}
    assert rows[str(runs[0])].find("a", class_="sweep-link").attrs["href"] == sweep_url
    assert rows[str(plain["id"])].find("a", class_="sweep-link") is None
