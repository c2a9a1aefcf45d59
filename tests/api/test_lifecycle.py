"""A run's life with real (tiny) training: queued, claimed, statistics, warnings, stream, cancel, delete."""

from __future__ import annotations

import json
import time

from factories import EXPLODING, LONG, TINY, WorkerThread, config, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text


def _run(client: TestClient, run_id: int) -> dict:
    return client.get(f"/api/runs/{run_id}").json()


def _events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_queued_run_is_trained_and_its_statistics_warnings_and_stream_arrive(
    client: TestClient, engine: Engine
) -> None:
    created = client.post("/api/runs", json={"preset": "collapse-prone", "config": config(EXPLODING)}).json()
    run_id = created["id"]
    with WorkerThread(engine):
        run = wait_until(lambda: (r := _run(client, run_id))["status"] not in ("queued", "running") and r, timeout=60)
    assert run["status"] == "completed", run["error"]
    assert run["worker"] == "test-worker" and run["started_at"] and run["finished_at"] and run["duration_s"] > 0
    assert run["info"]["num_classes"] == 8 and run["info"]["steps_per_epoch"] > 0
    stats = client.get(f"/api/runs/{run_id}/stats").json()
    assert stats["steps"] == list(range(run["steps"])) and run["steps"] == run["last_step"] + 1 > 0
    assert run["latest"]["loss"] == stats["columns"]["loss"][-1]
    assert all(abs(sum(h) - 1) < 1e-3 for h in stats["class_hist"])
    evals = client.get(f"/api/runs/{run_id}/evals").json()
    assert evals and run["final_eval"] == evals[-1] and evals[-1]["step"] == run["steps"]
    warnings = client.get(f"/api/runs/{run_id}/warnings").json()
    assert warnings and run["warning_count"] == len(warnings), "collapse-prone at lr 10 raised no warning"
    assert all(w["advice"]["overrides"] for w in warnings)

    # the stream of a finished run replays everything once, ends with the final status and closes
    with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds.count("warning") == len(warnings) and kinds.count("eval") == len(evals)
    assert events[-1] == ("status", {"status": "completed", "steps": run["steps"], "error": None})
    streamed = [s for kind, data in events if kind == "stats" for s in data["steps"]]
    assert streamed == stats["steps"]
    # a client resuming from a step gets only what follows it
    with client.stream("GET", f"/api/runs/{run_id}/events", params={"since_step": run["steps"] - 3}) as response:
        resumed = _events(response.read().decode())
    assert [s for kind, data in resumed if kind == "stats" for s in data["steps"]] == stats["steps"][-2:]


def test_cancel_stops_a_running_run_within_about_a_second(client: TestClient, engine: Engine) -> None:
    run_id = client.post("/api/runs", json={"config": config(LONG)}).json()["id"]
    with WorkerThread(engine):
        wait_until(lambda: _run(client, run_id)["steps"] > 0, timeout=30, what="first statistics")
        asked = time.monotonic()
        assert client.post(f"/api/runs/{run_id}/cancel").json()["cancel_requested"] is True
        run = wait_until(lambda: (r := _run(client, run_id))["status"] == "cancelled" and r, timeout=5, interval=0.02)
        assert time.monotonic() - asked < 1.5
        steps = run["steps"]
        time.sleep(0.3)
        assert _run(client, run_id)["steps"] == steps, "statistics kept arriving after the cancel"
        # the worker is free again: the next run is trained
        next_id = client.post("/api/runs", json={"config": config(TINY)}).json()["id"]
        wait_until(lambda: _run(client, next_id)["status"] == "completed", timeout=30, what="next run")
    assert client.get(f"/api/runs/{run_id}/stats").json()["steps"] == list(range(steps))


def test_deleting_a_running_run_stops_its_worker_and_leaves_nothing(client: TestClient, engine: Engine) -> None:
    run_id = client.post("/api/runs", json={"config": config(LONG)}).json()["id"]
    with WorkerThread(engine) as worker:
        wait_until(lambda: _run(client, run_id)["steps"] > 0, timeout=30, what="first statistics")
        assert client.delete(f"/api/runs/{run_id}").status_code == 204
        next_id = client.post("/api/runs", json={"config": config(TINY)}).json()["id"]
        assert next_id != run_id, "a deleted run's id was reused"
        wait_until(lambda: _run(client, next_id)["status"] == "completed", timeout=30, what="the worker to move on")
        assert worker.thread.is_alive()
    assert client.get(f"/api/runs/{run_id}").status_code == 404
    with engine.connect() as conn:
        for table in ("statchunk", "statblock", "evalstat", "runwarning"):
            assert conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE run_id = :r"), {"r": run_id}).scalar() == 0
