"""Apply advice remembers: a parent shows which child its advice made and offers it no more, the same
changes from two warnings show once, applying them again returns that child, and the lineage is shown."""

from __future__ import annotations

from dataclasses import replace

from factories import LOCAL, add_run, make_chunk, make_warning, write_stats
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy import Engine

from trainer import Advice


def _warning_ids(client: TestClient, run_id: int) -> list[int]:
    return [w["id"] for w in client.get(f"/api/runs/{run_id}/warnings").json()]


def test_advice_once_applied_links_its_child_and_is_not_offered_twice(client: TestClient, engine: Engine) -> None:
    parent = add_run(engine)
    hotter = make_warning(step=10)  # advice: temperature 5
    again = replace(make_warning(step=40, kind="low_entropy"), advice=hotter.advice)  # the same changes
    other = replace(
        make_warning(step=60, kind="exploding_logits"), advice=Advice("Clip harder", {"max_grad_norm": 0.5})
    )
    write_stats(engine, parent, [make_chunk(0, 100)], warnings=(hotter, again, other))
    first, second, third = _warning_ids(client, parent)

    cards = parse_html(client.get(f"/runs/{parent}/warnings").text)
    assert len(cards.find_all("button", class_="apply-advice")) == 2  # the repeated changes are offered once
    assert cards.by_id(f"warning-{second}").find("p", class_="applied").text == (
        f"The same changes as warning {first} above."
    )

    made = client.post(f"/api/runs/{parent}/apply-advice", json={"warning_id": first})
    assert made.status_code == 201
    child = made.json()
    assert child["parent_id"] == parent and child["config"]["temperature"] == 5.0
    # the same advice again, from either warning: the child it made, not a second copy
    for warning_id in (first, second):
        repeat = client.post(f"/api/runs/{parent}/apply-advice", json={"warning_id": warning_id})
        assert (repeat.status_code, repeat.json()["id"]) == (200, child["id"])
    assert client.get("/api/runs", params={"limit": 50}).json()["total"] == 2

    cards = parse_html(client.get(f"/runs/{parent}").text)
    for warning_id in (first, second):
        applied = cards.by_id(f"warning-{warning_id}").find("p", class_="applied")
        assert applied is not None and applied.text == f"Applied → #{child['id']}"
        assert applied.find("a").attrs["href"] == f"{LOCAL}/runs/{child['id']}"
    buttons = cards.find_all("button", class_="apply-advice")
    assert [b.attrs["data-warning-id"] for b in buttons] == [str(third)]  # only the advice not yet tried


def test_the_lineage_runs_from_the_root_through_this_run_to_its_children(client: TestClient, engine: Engine) -> None:
    root = add_run(engine)
    write_stats(engine, root, [make_chunk(0, 50)], warnings=(make_warning(),))
    middle = client.post(f"/api/runs/{root}/apply-advice", json={"warning_id": _warning_ids(client, root)[0]}).json()
    write_stats(engine, middle["id"], [make_chunk(0, 50)], warnings=(make_warning(step=5),))
    advice = {"warning_id": _warning_ids(client, middle["id"])[0]}
    leaf = client.post(f"/api/runs/{middle['id']}/apply-advice", json=advice).json()

    line = parse_html(client.get(f"/runs/{middle['id']}").text).by_id("lineage")
    assert line.text == f"Lineage: #{root} → #{middle['id']} (this run) → #{leaf['id']} queued"
    assert [a.attrs["href"] for a in line.find_all("a")] == [f"{LOCAL}/runs/{root}", f"{LOCAL}/runs/{leaf['id']}"]
    partial = parse_html(client.get(f"/runs/{leaf['id']}/header").text).by_id("lineage")  # live refresh agrees
    assert partial.text == f"Lineage: #{root} → #{middle['id']} → #{leaf['id']} (this run)"
    assert parse_html(client.get(f"/runs/{add_run(engine)}").text).find("p", id="lineage") is None
