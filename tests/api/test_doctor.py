"""Doctor mode: a doctored run that warns is stopped, its advice applied and the next attempt queued, until a
run finishes healthy, the advice runs out or the attempts are made; the lineage is returned by the API."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from factories import EXPLODING, TINY, make_chunk, make_warning, wait_until, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session

from app.core.config import Settings
from app.storage.models import Run
from app.worker.doctor import treat_runs
from app.worker.pool import WorkerPool
from trainer import Advice


def _doctored(client: TestClient, attempts: int = 4, **config: Any) -> dict[str, Any]:
    body = {"preset": "collapse-prone", "config": {**TINY, **config}, "doctor": True, "doctor_max_attempts": attempts}
    response = client.post("/api/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _set(engine: Engine, run_id: int, **values: Any) -> None:
    with Session(engine) as session:
        session.exec(update(Run).where(Run.id == run_id).values(**values))
        session.commit()


def _run(client: TestClient, run_id: int) -> dict[str, Any]:
    return client.get(f"/api/runs/{run_id}").json()


def _warned_and_stopped(client: TestClient, engine: Engine, run_id: int, *warnings: Any) -> None:
    """What a worker does with a doctored run that warns: records the warning, then obeys the stop."""
    _set(engine, run_id, status="running")
    write_stats(engine, run_id, [make_chunk(0, 20)], warnings=warnings or (make_warning(),))
    treat_runs(engine)
    assert _run(client, run_id)["cancel_requested"] is True and _run(client, run_id)["doctor_state"] == "stopping"
    _set(engine, run_id, status="cancelled")


def test_a_warned_run_is_stopped_and_its_advice_queued_as_the_next_attempt(client: TestClient, engine: Engine) -> None:
    first = _doctored(client)
    assert (first["doctor_attempt"], first["doctor_state"], first["doctor_max"]) == (1, "watching", 4)
    _warned_and_stopped(client, engine, first["id"])
    assert treat_runs(engine) == 1 and treat_runs(engine) == 0, "a run is concluded once"

    parent = _run(client, first["id"])
    (child,) = [r for r in client.get("/api/runs").json()["items"] if r["id"] != first["id"]]
    child = _run(client, child["id"])
    assert parent["doctor_state"] == "done"
    assert parent["doctor_outcome"].endswith(f"queued attempt 2: run #{child['id']}")
    assert (child["parent_id"], child["status"], child["doctor_attempt"], child["doctor_state"]) == (
        first["id"], "queued", 2, "watching",
    )  # fmt: skip
    assert child["config"] == {**parent["config"], "temperature": 5.0}

    lineage = client.get(f"/api/runs/{child['id']}/doctor").json()
    assert [a["run_id"] for a in lineage["attempts"]] == [first["id"], child["id"]]
    assert lineage["attempts"][1]["changed"] == {"temperature": 5.0} and lineage["state"] == "in progress"
    assert lineage["attempts"][0]["warnings"] == ["critical one_hot from step 10"]

    _set(engine, child["id"], status="completed")  # trained without a warning
    assert treat_runs(engine) == 1
    assert _run(client, child["id"])["doctor_outcome"].startswith("healthy")
    done = client.get(f"/api/runs/{first['id']}/doctor").json()
    assert done["state"] == "healthy" and done["result"] == f"run #{child['id']} finished healthy after 2 attempt(s)"


def test_the_doctor_stops_when_the_attempts_are_made(client: TestClient, engine: Engine) -> None:
    only = _doctored(client, attempts=1)
    _warned_and_stopped(client, engine, only["id"])
    treat_runs(engine)
    assert _run(client, only["id"])["doctor_outcome"] == "1 attempts made, still one_hot: the doctor stops"
    assert client.get("/api/runs").json()["total"] == 1
    assert client.get(f"/api/runs/{only['id']}/doctor").json()["state"] == "stopped"


def test_advice_that_leads_back_to_a_tried_config_has_run_out(client: TestClient, engine: Engine) -> None:
    """Overshoot: the child is too uniform and its advice steps back to the parent's config, which already
    collapsed; the doctor does not go round in circles."""
    first = _doctored(client, temperature=4.0)
    _warned_and_stopped(client, engine, first["id"])
    treat_runs(engine)
    child_id = int(_run(client, first["id"])["doctor_outcome"].rsplit("#", 1)[1])
    back = replace(make_warning(kind="too_uniform"), advice=Advice("Cool down: 5 -> 4", {"temperature": 4.0}))
    _warned_and_stopped(client, engine, child_id, back)
    treat_runs(engine)
    assert _run(client, child_id)["doctor_outcome"].startswith("advice ran out: too_uniform (Cool down: 5 -> 4)")
    assert client.get("/api/runs").json()["total"] == 2


def test_info_warnings_and_runs_without_doctor_are_left_alone(client: TestClient, engine: Engine) -> None:
    plain = client.post("/api/runs", json={"config": TINY}).json()
    doctored = _doctored(client)
    note = replace(make_warning(), severity="info")
    for run_id, warnings in ((plain["id"], (make_warning(),)), (doctored["id"], (note,))):
        _set(engine, run_id, status="running")
        write_stats(engine, run_id, [make_chunk(0, 5)], warnings=warnings)
    assert treat_runs(engine) == 0
    assert not _run(client, plain["id"])["cancel_requested"] and not _run(client, doctored["id"])["cancel_requested"]
    missing = client.get(f"/api/runs/{plain['id']}/doctor")
    assert missing.status_code == 404 and "is not doctored" in missing.json()["detail"]
    bad = client.post("/api/runs", json={"config": TINY, "doctor": True, "doctor_max_attempts": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "doctor_max_attempts"


@pytest.mark.slow
def test_doctor_mode_with_real_workers_trains_until_a_run_is_healthy_or_stops(
    client: TestClient, settings: Settings
) -> None:
    """An exploding learning rate (10): each attempt is stopped by its warning and the advice lowers the lr,
    until an attempt trains without warning or the four attempts are made."""
    first = _doctored(client, attempts=4, **{**EXPLODING, "epochs": 3})
    pool = WorkerPool(settings.database_url, 1, heartbeat_seconds=0.2, stale_after_seconds=5.0)
    pool.start()
    try:
        lineage = wait_until(
            lambda: (d := client.get(f"/api/runs/{first['id']}/doctor").json())["state"] != "in progress" and d,
            timeout=240, interval=0.5, what="the doctor's lineage to end",
        )  # fmt: skip
    finally:
        pool.stop()
    attempts = lineage["attempts"]
    # stopped, or finished before the stop reached it (a tiny run trains in about a second)
    assert len(attempts) >= 2 and attempts[0]["status"] in ("cancelled", "completed") and attempts[0]["warnings"]
    assert all(a["changed"] for a in attempts[1:]), "each attempt applies the advice of the one before"
    assert _run(client, attempts[1]["run_id"])["config"]["lr"] < 10.0, "the lr comes first for exploding logits"
    if lineage["state"] == "healthy":
        assert attempts[-1]["status"] == "completed" and not attempts[-1]["warnings"]
    else:
        assert len(attempts) == 4 or "advice ran out" in lineage["result"], lineage
