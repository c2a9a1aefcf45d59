"""A run on several processes through the API and a real worker: one run with complete statistics, a rank
killed mid-run failing the run with its reason while the worker goes on, and configs refused at submit."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from factories import LONG, TINY, WorkerThread, config, pid_alive, wait_until
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy import Engine

from app.core.config import Settings
from app.main import create_app
from trainer import from_dict
from trainer.budget import estimate

LOCAL = "http://127.0.0.1"


def _run(client: TestClient, run_id: int) -> dict:
    return client.get(f"/api/runs/{run_id}").json()


def _finished(client: TestClient, run_id: int) -> dict | None:
    run = _run(client, run_id)
    return run if run["status"] not in ("queued", "running") else None


def _ranks() -> dict[str, int]:
    """This process's children that are ranks of a run ({"cw-rank-1": pid}), read from /proc."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid() and name.startswith("cw-rank-"):
            ranks[name] = int(entry.name)
    return ranks


@pytest.mark.slow
def test_a_two_process_run_through_the_api_is_one_run_with_every_step(client: TestClient, engine: Engine) -> None:
    body = {"config": config(TINY, processes=2, epochs=3, data={"n_samples": 200})}
    run_id = client.post("/api/runs", json=body).json()["id"]
    with WorkerThread(engine):
        run = wait_until(lambda: _finished(client, run_id), timeout=90, what="the run to end")
    assert run["status"] == "completed", run["error"]
    assert run["info"]["device"] == "cpu, 2 processes (gloo)" and run["config"]["processes"] == 2
    listed = client.get("/api/runs").json()
    assert listed["total"] == 1 and [r["id"] for r in listed["items"]] == [run_id]
    rows = parse_html(client.get("/").text).by_id("runs-body").find_all("tr")
    assert [r.attrs["data-run-id"] for r in rows] == [str(run_id)], "the runs page shows one run"
    stats = client.get(f"/api/runs/{run_id}/stats").json()
    assert run["steps"] == 3 * math.ceil(160 / 32) and stats["steps"] == list(range(run["steps"]))
    assert all(v is not None for v in stats["columns"]["entropy_p10"] + stats["columns"]["loss"])
    evals = client.get(f"/api/runs/{run_id}/evals").json()
    assert [e["step"] for e in evals] == [5, 10, 15]


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_run_with_its_reason_and_the_worker_trains_the_next(
    client: TestClient, engine: Engine
) -> None:
    run_id = client.post("/api/runs", json={"config": config(LONG, processes=2)}).json()["id"]
    with WorkerThread(engine):
        wait_until(lambda: _run(client, run_id)["steps"] > 0, timeout=60, what="first statistics")
        ranks = _ranks()
        assert set(ranks) == {"cw-rank-0", "cw-rank-1"}
        os.kill(ranks["cw-rank-1"], signal.SIGKILL)
        killed = time.monotonic()
        run = wait_until(lambda: _finished(client, run_id), timeout=30, what="the run to fail")
        assert time.monotonic() - killed < 5
        assert run["status"] == "failed" and run["error"] == "rank 1 died (signal 9, SIGKILL)"
        assert run["steps"] > 0, "the statistics measured before the death are kept"
        assert not any(pid_alive(pid) for pid in ranks.values()) and _ranks() == {}
        next_id = client.post("/api/runs", json={"config": config(TINY)}).json()["id"]
        after = wait_until(lambda: _finished(client, next_id), timeout=60, what="the next run")
    assert after["status"] == "completed", after["error"]


@pytest.mark.parametrize(
    "overrides,loc,says",
    [
        ({"processes": 3}, ["body", "config", "batch_size"], "must be divisible by processes (3)"),
        ({"processes": 0}, ["body", "config", "processes"], "must be in [1, 64], got 0"),
        ({"processes": 65}, ["body", "config", "processes"], "must be in [1, 64], got 65"),
    ],
)
def test_a_config_its_processes_cannot_train_is_a_422_naming_the_field(
    client: TestClient, overrides: dict, loc: list[str], says: str
) -> None:
    response = client.post("/api/runs", json={"config": config(TINY, **overrides)})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and says in error["msg"]
    assert client.get("/api/runs").json()["total"] == 0


def test_more_processes_than_cuda_devices_is_a_422_at_submit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a machine with one GPU
    response = client.post("/api/runs", json={"config": config(TINY, processes=2, device="cuda")})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "config", "processes"]
    assert "need 2 CUDA devices" in error["msg"] and "has 1" in error["msg"]


def test_the_memory_budget_counts_every_process(tmp_path: Path) -> None:
    one = estimate(from_dict(config(TINY)))
    budget_mb = math.ceil(1.5 * one.memory_bytes / 2**20)  # room for one process, not for two
    database = f"sqlite:///{tmp_path / 'b.db'}"
    settings = Settings(database_url=database, data_dir=tmp_path / "d", workers=0, max_run_memory_mb=budget_mb)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        assert client.post("/api/runs", json={"config": config(TINY)}).status_code == 201
        response = client.post("/api/runs", json={"config": config(TINY, processes=2)})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "config"] and "on each of 2 processes" in error["msg"]
    assert f"memory budget of {budget_mb:,} MB" in error["msg"]
