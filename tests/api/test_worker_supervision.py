"""Worker supervision: dead workers replaced and reported at /api/health, errors outside training,
SIGTERM after a worker death, the database's clock for heartbeats, a wrongly reaped run taken back."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import LONG, TINY, WorkerThread, add_run, config, skew_clock, wait_until
from fastapi import FastAPI
from fastapi.testclient import TestClient
from html_dom import parse_html
from sqlalchemy import Engine, text, update
from sqlmodel import Session

import app.worker.claim as worker_module
from app.core.config import Settings
from app.storage.engine import init_db, make_engine
from app.storage.models import Run
from app.worker.claim import Heartbeat, claim_run, confirm_window, count_busy_workers, execute_run, reap_stale_runs
from app.worker.pool import WorkerPool
from trainer import TrainResult

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1"


def _run(engine: Engine, run_id: int) -> Run:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def _finished(engine: Engine, run_id: int) -> Run | None:
    run = _run(engine, run_id)
    return run if run.status not in ("queued", "running") else None


# --- finding 1: dead workers are replaced; errors outside train() do not end a worker --------------
def test_a_killed_pool_worker_is_replaced_and_health_reports_it(app: FastAPI, settings: Settings) -> None:
    pool = WorkerPool(settings.database_url, 1, heartbeat_seconds=0.2, stale_after_seconds=1.0, respawn_delay=0.1)
    app.state.worker_pool = pool  # as `collapsewatch serve` does: the lifespan starts and stops it
    engine: Engine = app.state.engine
    with TestClient(app, base_url=LOCAL) as client:
        health = client.get("/api/health").json()
        assert (health["workers_configured"], health["workers_alive"], health["worker_restarts"]) == (1, 1, 0)
        doomed = add_run(engine, **LONG)
        run = wait_until(lambda: (r := _run(engine, doomed)).status == "running" and r, what="the claim")
        assert client.get("/api/health").json()["busy_workers"] == 1  # the database's view of its workers
        pid = int(str(run.worker).rsplit(":", 1)[1])
        assert pid == pool.processes[0].pid  # the child this test's pool started
        os.kill(pid, signal.SIGKILL)

        health = wait_until(
            lambda: (h := client.get("/api/health").json())["worker_restarts"] == 1 and h, timeout=5, what="respawn"
        )
        assert health["workers_alive"] == 1 and health["status"] == "ok"
        assert f"(pid {pid}) died with exit code -9 (killed by SIGKILL)" in health["last_worker_exit"]
        assert pool.processes[0].pid != pid
        header = parse_html(client.get("/").text).by_id("worker-status")  # every page's header says it too
        assert header.text == "workers 1/1 · 1 restarted"
        assert f"(pid {pid}) died with exit code -9" in header.attrs["title"]
        # the replacement trains the next run; the killed worker's run is failed as lost, not left running
        next_run = add_run(engine, **TINY)
        finished = wait_until(lambda: _finished(engine, next_run), timeout=20, what="the next run")
        assert finished.status == "completed", finished.error
        lost = _run(engine, doomed)
        assert lost.status == "failed" and str(lost.error).startswith("worker lost (")
    assert pool.status().alive == 0


def test_a_run_deleted_right_after_its_claim_does_not_end_the_worker(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = worker_module.claim_run
    deleted: list[int] = []

    def claim_then_lose(engine: Engine, *, worker: str) -> int | None:
        run_id = claim(engine, worker=worker)
        if run_id is not None and not deleted:  # the user deletes it before the worker reads its config
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM run WHERE id = :id"), {"id": run_id})
            deleted.append(run_id)
        return run_id

    monkeypatch.setattr(worker_module, "claim_run", claim_then_lose)
    first, second = add_run(engine), add_run(engine)
    with WorkerThread(engine) as worker:
        finished = wait_until(lambda: _finished(engine, second), timeout=20, what="the second run")
        assert worker.thread.is_alive()
    assert deleted == [first] and finished.status == "completed", finished.error


def test_an_error_outside_training_fails_that_run_with_its_reason_and_the_worker_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sink = worker_module.DatabaseSink
    calls: list[int] = []

    def flaky_sink(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return real_sink(*args, **kwargs)

    monkeypatch.setattr(worker_module, "DatabaseSink", flaky_sink)
    first, second = add_run(engine), add_run(engine)
    with WorkerThread(engine) as worker:
        done = wait_until(lambda: _finished(engine, second), timeout=20, what="the second run")
        assert worker.thread.is_alive()
    assert done.status == "completed", done.error
    failed = _run(engine, first)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error == "worker test-worker could not run it: RuntimeError: disk on fire"


def test_pool_respawn_delay_doubles_in_a_crash_loop_and_is_capped(settings: Settings) -> None:
    pool = WorkerPool(settings.database_url, 1, respawn_delay=0.5, max_respawn_delay=4.0, healthy_after=60.0)
    slot = pool._slots[0]

    class Dead:  # a process that died: what _bury reads of it
        name, pid, exitcode = "collapsewatch-worker-0", 4242, 1

        def close(self) -> None: ...

    delays = []
    for lived in (1.0, 1.0, 1.0, 1.0, 1.0, 120.0):
        slot.process, slot.started = Dead(), time.monotonic() - lived
        pool._bury(slot)
        assert slot.respawn_at is not None and slot.process is None
        delays.append(round(slot.respawn_at - time.monotonic(), 1))
    # quick deaths in a row: 0.5, 1, 2, 4, then capped; a worker that lived long starts the count again
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 0.5]
    assert pool.last_exit == "collapsewatch-worker-0 (pid 4242) died with exit code 1"


def _spawned_children(pid: int) -> list[int]:
    """Worker processes started (by multiprocessing spawn) by process `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the server's workers in /proc")
def test_sigterm_stops_serve_promptly_after_one_of_its_workers_was_killed(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{tmp_path / 'serve.db'}"
    command = [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "1", "--database-url", database]
    command += ["--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "COLLAPSEWATCH_HEARTBEAT_SECONDS": "0.2"}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_id = wait_until(lambda: _post_run(url), timeout=30, interval=0.2, what="the server")
        # a claim: the worker is in its loop (where a shared Event used to leave set() blocked)
        run = wait_until(lambda: (r := httpx.get(f"{url}/api/runs/{run_id}").json())["worker"] and r, timeout=30)
        worker_pid = int(run["worker"].rsplit(":", 1)[1])
        assert worker_pid in _spawned_children(server.pid)
        os.kill(worker_pid, signal.SIGKILL)
        wait_until(lambda: httpx.get(f"{url}/api/health").json()["last_worker_exit"], timeout=5, what="the death")
        workers = _spawned_children(server.pid)  # the replacement, maybe still starting
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        if server.poll() is None:
            server.kill()
        output = server.stdout.read() if server.stdout else ""
    assert server.returncode == 0, output
    assert took < 8, f"took {took:.1f} s to stop\n{output}"
    assert f"(pid {worker_pid}) died with exit code -9" in output
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped with the server, not orphaned


def _post_run(url: str) -> int | None:
    try:
        return httpx.post(f"{url}/api/runs", json={"config": config(LONG)}, timeout=2).json()["id"]
    except httpx.HTTPError:
        return None


# --- finding 2: heartbeats and the stale check read the database's clock ---------------------------
def test_a_worker_whose_clock_is_an_hour_behind_is_not_reaped(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    skew_clock(monkeypatch, timedelta(hours=-1), only_off_main=True)
    run_id = add_run(engine, **LONG)
    with WorkerThread(engine, stale_after_seconds=1.0):
        wait_until(lambda: _run(engine, run_id).steps > 0, timeout=20, what="training")
        deadline = time.monotonic() + 1.5  # longer than stale_after_seconds: beats must keep it fresh
        while time.monotonic() < deadline:
            assert reap_stale_runs(engine, stale_after_seconds=1.0) == []  # another host, true clock
            time.sleep(0.1)
        run = _run(engine, run_id)
        assert run.status == "running" and run.error is None
        beat = run.heartbeat_at
        assert beat is not None and abs(beat - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_stale_check_reads_the_database_clock_not_the_reapers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def silent_run(worker: str) -> int:
        run_id = add_run(engine)
        assert claim_run(engine, worker=worker) == run_id
        with engine.begin() as conn:  # its worker last beat a minute ago
            ago = datetime.now(UTC) - timedelta(minutes=1)
            conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=ago))
        return run_id

    fresh = add_run(engine)
    assert claim_run(engine, worker="alive") == fresh
    silent = silent_run("gone")
    skew_clock(monkeypatch, timedelta(hours=1))  # a reaper an hour ahead reaps no live run
    assert reap_stale_runs(engine, stale_after_seconds=30) == [silent]
    silent = silent_run("gone too")
    skew_clock(monkeypatch, timedelta(hours=-1))  # nor does one an hour behind spare a silent one
    assert reap_stale_runs(engine, stale_after_seconds=30) == [silent]
    assert _run(engine, fresh).status == "running"
    with engine.connect() as conn:
        assert count_busy_workers(conn, stale_after_seconds=30) == 1


@pytest.mark.postgres
def test_database_clock_on_postgresql_ignores_the_session_time_zone(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url + "%20-ctimezone%3DPacific/Kiritimati")  # UTC+14: a naive now() would be off
    try:
        init_db(engine)
        run_id = add_run(engine)
        skew_clock(monkeypatch, timedelta(hours=-3))
        assert claim_run(engine, worker="w") == run_id
        Heartbeat(engine, run_id, "w", 0.2)._tick(beat=True)
        beat = _run(engine, run_id).heartbeat_at
        assert beat is not None and abs(beat - datetime.now(UTC)) < timedelta(seconds=5)
        assert reap_stale_runs(engine, stale_after_seconds=30) == []
        with engine.connect() as conn:
            assert count_busy_workers(conn, stale_after_seconds=30) == 1
        with engine.begin() as conn:
            conn.execute(update(Run).values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=1)))
        assert reap_stale_runs(engine, stale_after_seconds=30) == [run_id]
    finally:
        engine.dispose()


# --- finding 3: a live worker's verdict wins over a "worker lost" mark ----------------------------
def test_a_run_reaped_while_its_worker_lives_is_taken_back_by_its_next_heartbeat(engine: Engine) -> None:
    run_id = add_run(engine, **LONG)
    with WorkerThread(engine, stale_after_seconds=60.0):
        wait_until(lambda: _run(engine, run_id).steps > 0, timeout=20, what="training")
        # a cutoff in the future: as if a held lock had kept its heartbeat from the database too long
        assert reap_stale_runs(engine, stale_after_seconds=-1) == [run_id]
        assert _run(engine, run_id).status == "failed"
        back = wait_until(lambda: (r := _run(engine, run_id)).status == "running" and r, timeout=3, what="take-back")
        assert back.finished_at is None and str(back.error).startswith("marked failed for a while: worker lost (")
        steps = back.steps
        wait_until(lambda: _run(engine, run_id).steps > steps, timeout=5, what="training to go on")
        with engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
        run = wait_until(lambda: _finished(engine, run_id), timeout=10, what="the cancel")
    assert run.status == "cancelled"
    assert run.error is not None and "marked failed for a while: worker lost (" in run.error
    assert "worker test-worker was alive and went on" in run.error


def test_a_run_reaped_just_before_its_end_takes_the_workers_final_status(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def train_then_get_reaped(config: dict[str, Any], *, sink: Any, should_stop: Any) -> TrainResult:
        reap_stale_runs(engine, stale_after_seconds=-1)  # the reaper wins the lock after the last beat
        result = TrainResult("completed", config, steps=0, epochs=1, duration_s=0.5, final_eval=None, warnings=[])
        sink.on_end(result)  # the sink's end write finds the run failed and leaves it
        return result

    monkeypatch.setattr(worker_module, "train", train_then_get_reaped)
    run_id, other = add_run(engine), add_run(engine)
    assert claim_run(engine, worker="w") == run_id
    assert execute_run(engine, run_id, worker="w", heartbeat_seconds=60, shutdown=None) == "completed"
    run = _run(engine, run_id)
    assert run.status == "completed" and run.duration_s == 0.5 and run.finished_at is not None
    assert str(run.error).startswith("marked failed for a while: worker lost (no heartbeat since ")
    # only the owner can take a run back: a run reaped from a dead worker stays failed
    assert claim_run(engine, worker="dead") == other
    assert reap_stale_runs(engine, stale_after_seconds=-1) == [other]
    worker_module.finish_run(engine, other, worker="someone else", status="completed", error=None)
    assert _run(engine, other).status == "failed"


# --- a worker's training process has a memory limit ------------------------------------------------
def test_a_run_over_the_workers_memory_limit_fails_with_that_reason_and_the_worker_trains_on(
    app: FastAPI, settings: Settings
) -> None:
    # a run the submit-time estimate would let through if its budget were set high: 2 x 4096-wide
    # layers are 17M parameters, ~270 MB with AdamW's state, against a cap of 150 MB above the baseline
    pool = WorkerPool(settings.database_url, 1, heartbeat_seconds=0.2, stale_after_seconds=5.0, memory_mb=150)
    app.state.worker_pool = pool
    engine: Engine = app.state.engine
    with TestClient(app, base_url=LOCAL):
        big = add_run(engine, hidden_sizes=[4096, 4096], data={"n_samples": 256})
        small = add_run(engine, **TINY)
        failed = wait_until(lambda: _finished(engine, big), timeout=60, what="the oversized run")
        assert failed.status == "failed"
        assert str(failed.error).startswith("out of memory: the run needed more than this worker's memory limit")
        assert "COLLAPSEWATCH_WORKER_MEMORY_MB" in str(failed.error)
        finished = wait_until(lambda: _finished(engine, small), timeout=60, what="the next run")
        assert finished.status == "completed", finished.error
        assert finished.worker == failed.worker  # the same process, still alive after the failure
        assert pool.status().restarts == 0


def test_a_lock_that_silences_every_heartbeat_does_not_get_a_live_run_reaped(
    engine: Engine, settings: Settings
) -> None:
    # a 2.5 s exclusive lock against a 1 s stale limit: the heartbeats wait in SQLite's busy handler, and
    # the reaper, which reads the silent run during the lock, must not mark it lost once it is released
    run_id = add_run(engine, **LONG)
    path = str(settings.database_url).removeprefix("sqlite:///")
    with WorkerThread(engine, stale_after_seconds=60.0, heartbeat_seconds=0.2):
        wait_until(lambda: _run(engine, run_id).steps > 0, timeout=20, what="training")
        holder = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(2.5, holder.rollback)
        release.start()
        try:
            time.sleep(1.6)  # every heartbeat is now over the limit, as the reaper reads it
            assert [r for r in _silent(engine, 1.0) if r == run_id] == [run_id]
            started = time.monotonic()
            reaped = reap_stale_runs(engine, stale_after_seconds=1.0, confirm_seconds=confirm_window(0.2))
            assert time.monotonic() - started >= confirm_window(0.2)  # it waited for the lock, then watched
        finally:
            release.join()
            holder.close()
        assert reaped == []
        run = _run(engine, run_id)
        assert (run.status, run.error) == ("running", None)
        # a run whose worker is truly gone is still reaped, after the same confirmation
        with engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
        assert wait_until(lambda: _finished(engine, run_id), timeout=10, what="the cancel").status == "cancelled"
    silent = add_run(engine, **TINY)
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == silent)
            .values(status="running", worker="gone:1", heartbeat_at=datetime(2000, 1, 1))
        )
    assert reap_stale_runs(engine, stale_after_seconds=1.0, confirm_seconds=0.3) == [silent]


def _silent(engine: Engine, stale_after_seconds: float) -> list[int]:
    return [run_id for run_id, _, _ in worker_module._silent_runs(engine, stale_after_seconds)]
