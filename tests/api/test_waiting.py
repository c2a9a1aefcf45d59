"""A run page before anything is drawn: a queued run's place and who will take it, a run preparing its
data, a running run's live duration, and a finished run's "none raised"."""

from __future__ import annotations

from datetime import timedelta

from factories import LOCAL, add_run
from fastapi import FastAPI
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy import Engine, update

from app.storage.models import Run, utcnow
from app.worker.pool import PoolStatus


def _header(client: TestClient, run_id: int):
    response = client.get(f"/runs/{run_id}/header")
    assert response.status_code == 200
    return parse_html(response.text)


def test_a_queued_run_says_its_place_and_that_no_worker_here_will_take_it(client: TestClient, engine: Engine) -> None:
    first, second, third = (add_run(engine) for _ in range(3))
    with engine.begin() as conn:  # the first is being trained elsewhere
        conn.execute(update(Run).where(Run.id == first).values(status="running", started_at=utcnow(), steps=5))
    assert _header(client, second).by_id("waiting").text == (
        "Queued: next in the queue; 1 run training now; this server runs no workers: "
        "a `collapsewatch worker` on another machine will claim it."
    )
    waiting = parse_html(client.get(f"/runs/{third}").text).by_id("waiting")  # the page and its partial agree
    assert waiting.text.startswith("Queued: number 2 in the queue (1 ahead); 1 run training now;")


def test_a_queued_run_on_a_server_whose_workers_are_all_dead_says_it_waits(app: FastAPI, engine: Engine) -> None:
    class DeadPool:  # a pool whose every worker died and is waiting out its respawn delay
        def start(self) -> None: ...

        def stop(self) -> None: ...

        def status(self) -> PoolStatus:
            return PoolStatus(configured=2, alive=0, restarts=3, last_exit="collapsewatch-worker-0 died")

    app.state.worker_pool = DeadPool()
    run_id = add_run(engine)
    with TestClient(app, base_url=LOCAL) as client:
        text = _header(client, run_id).by_id("waiting").text
    assert text.endswith("no worker of this server is alive (2 configured, restarting): it waits.")
    app.state.worker_pool = None


def test_a_running_run_with_no_batch_yet_is_preparing_and_its_duration_is_live(
    client: TestClient, engine: Engine
) -> None:
    run_id = add_run(engine)
    started = utcnow() - timedelta(seconds=75)
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(status="running", started_at=started, worker="w:1"))
    doc = _header(client, run_id)
    assert doc.by_id("waiting").attrs.get("data-preparing") == ""
    assert doc.by_id("waiting").text.startswith("Preparing: making the data and building the model on w:1")
    duration = doc.find("dd", data_field="duration")
    assert duration is not None and 75 <= float(duration.attrs["data-elapsed-s"]) < 85
    assert duration.text.startswith("1 min 1")  # 1 min 15 s, or a little more on a slow machine
    with engine.begin() as conn:  # its first batches are in: no longer preparing
        conn.execute(update(Run).where(Run.id == run_id).values(steps=3))
    assert _header(client, run_id).find("p", id="waiting") is None


def test_a_finished_run_without_warnings_says_none_were_raised(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    assert parse_html(client.get(f"/runs/{run_id}").text).by_id("no-warnings").text == "No warnings so far."
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(status="completed", duration_s=12.5))
    doc = parse_html(client.get(f"/runs/{run_id}").text)
    assert doc.by_id("no-warnings").text == "No warnings: none raised."
    assert doc.find("dd", data_field="duration").text == "12.5 s"
    assert doc.find("p", id="waiting") is None
