"""Workers: atomic claims (SQLite and PostgreSQL), heartbeats, lost workers, shutdown."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable

import pytest
from factories import LONG, add_run, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.config import Settings
from app.storage.engine import init_db, make_engine
from app.storage.models import Run
from app.worker.claim import claim_run, reap_stale_runs
from app.worker.pool import worker_process_main


def _claim_together(engines: list[Engine]) -> list[int | None]:
    """Every engine (a worker) claims at the same instant; returns what each got."""
    barrier = threading.Barrier(len(engines))
    won: list[int | None] = [None] * len(engines)

    def claim(i: int) -> None:
        barrier.wait()
        won[i] = claim_run(engines[i], worker=f"w{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def _race(engines: list[Engine], rounds: int, runs_per_round: int, make_runs: Callable[[int], list[int]]) -> None:
    """Each queued run goes to exactly one worker, and the database names that worker."""
    for _ in range(rounds):
        ids = make_runs(runs_per_round)
        won = _claim_together(engines)
        assert sorted(r for r in won if r is not None) == sorted(ids), f"claims {won} for runs {ids}"
        with Session(engines[0]) as session:
            for i, run_id in enumerate(won):
                if run_id is not None:
                    run = session.get(Run, run_id)
                    assert run is not None and run.status == "running" and run.worker == f"w{i}"


def test_two_workers_racing_on_sqlite_never_share_a_run(settings: Settings, engine: Engine) -> None:
    engines = [make_engine(settings.database_url) for _ in range(4)]  # one connection pool per "worker"
    _race(engines, rounds=8, runs_per_round=1, make_runs=lambda n: [add_run(engine) for _ in range(n)])
    assert claim_run(engine, worker="late") is None


@pytest.mark.postgres
def test_workers_racing_on_postgresql_never_share_a_run(pg_engines: list[Engine]) -> None:
    assert init_db(pg_engines[0]) == []  # a second start changes nothing

    def make_runs(n: int) -> list[int]:
        return [add_run(pg_engines[0]) for _ in range(n)]

    _race(pg_engines, rounds=5, runs_per_round=1, make_runs=make_runs)
    _race(pg_engines, rounds=3, runs_per_round=2, make_runs=make_runs)  # SKIP LOCKED: losers take the next


def test_a_killed_worker_process_leaves_its_run_failed_with_its_statistics(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    run_id = add_run(engine, **LONG)
    ctx = multiprocessing.get_context("spawn")
    shutdown = ctx.Event()
    process = ctx.Process(
        target=worker_process_main,
        args=(settings.database_url, "doomed", settings.heartbeat_seconds, 60.0, shutdown, 1),
        daemon=True,
    )
    process.start()
    try:
        wait_until(lambda: client.get(f"/api/runs/{run_id}").json()["steps"] >= 20, timeout=40, what="statistics")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
    flushed = client.get(f"/api/runs/{run_id}").json()["steps"]
    # the server's own reaper (every 0.2 s here) notices the silence after stale_after_seconds (1 s)
    run = wait_until(lambda: (r := client.get(f"/api/runs/{run_id}").json())["status"] == "failed" and r, timeout=10)
    assert run["error"].startswith("worker lost (no heartbeat since ") and "doomed" in run["error"]
    assert run["finished_at"] is not None
    stats = client.get(f"/api/runs/{run_id}/stats", params={"columns": "loss"}).json()
    assert len(stats["steps"]) == run["steps"] == flushed >= 20
    assert stats["steps"] == list(range(flushed))


def test_a_live_heartbeat_is_never_reaped(engine: Engine) -> None:
    run_id = add_run(engine)
    assert claim_run(engine, worker="alive") == run_id
    assert reap_stale_runs(engine, stale_after_seconds=30) == []
    with Session(engine) as session:
        assert session.get(Run, run_id).status == "running"  # type: ignore[union-attr]
