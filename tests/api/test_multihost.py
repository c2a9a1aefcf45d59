"""Workers on several hosts: hosts that report their workers at /api/health and in the header, and real
`collapsewatch worker` processes in network namespaces reaching PostgreSQL and the server over veth addresses,
one cut off mid-run and one killed, the others finishing the rest."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import LOCAL, TINY, add_run, config, wait_until
from fastapi import FastAPI
from fastapi.testclient import TestClient
from html_dom import parse_html
from netns import Forwarder, Network, unavailable
from sqlalchemy import Engine, make_url, select, update

from app.cli import build_parser
from app.core.config import Settings
from app.main import create_app
from app.storage.engine import make_engine
from app.storage.models import Run, WorkerHost
from app.worker.claim import confirm_window
from app.worker.hosts import HostReporter, PoolStatus
from app.worker.lease import session_keepalive

ROOT = Path(__file__).resolve().parents[2]
STALE, BEAT, REAP = 3.0, 0.3, 0.5  # seconds: stale limit, heartbeat, the server's reap interval
# ~1,000 batches: a few seconds with three workers sharing two cores, long enough to be cut mid-run
RUN = {"epochs": 40, "batch_size": 32, "hidden_sizes": [64], "data": {"n_samples": 1024}}


# --- health across hosts (SQLite, in-process reporters) ----------------------------------------------------
def test_hosts_that_report_are_listed_at_health_and_counted_in_the_header(app: FastAPI, engine: Engine) -> None:
    busy = HostReporter(engine, status=lambda: PoolStatus(4, 3, 2, "w-1 died with exit code -9"), role="worker",
                        interval=60, host="gpu-box")  # fmt: skip
    idle = HostReporter(engine, status=lambda: PoolStatus(1, 1, 0, None), role="worker", interval=60, host="cpu-box")
    gone = HostReporter(engine, status=lambda: PoolStatus(2, 2, 0, None), role="worker", interval=60, host="old-box")
    for reporter in (busy, idle, gone):
        reporter.report()
    with engine.begin() as conn:  # old-box last reported a minute ago: switched off without a word
        conn.execute(update(WorkerHost).where(WorkerHost.host == "old-box").values(updated_at=_minutes_ago(1)))
    with TestClient(app, base_url=LOCAL) as client:
        health = client.get("/api/health").json()
        hosts = {h["host"]: h for h in health["hosts"]}
        assert set(hosts) == {"gpu-box", "cpu-box", "old-box"}
        assert (hosts["gpu-box"]["workers_configured"], hosts["gpu-box"]["workers_alive"]) == (4, 3)
        assert hosts["gpu-box"]["last_exit"] == "w-1 died with exit code -9" and hosts["gpu-box"]["pid"] == os.getpid()
        assert [hosts[h]["stale"] for h in ("gpu-box", "cpu-box", "old-box")] == [False, False, True]
        assert hosts["old-box"]["seconds_since_report"] >= 59
        assert (health["status"], health["cluster"]) == ("ok", "degraded"), "gpu-box is short, this server is not"
        # this server's own fields describe its own pool (it has none), as before
        assert (health["workers_configured"], health["workers_alive"], health["worker_restarts"]) == (0, 0, 0)
        header = parse_html(client.get("/").text).by_id("worker-status")
        assert header.text == "workers 4/5 alive, restarting · 2 hosts · 2 restarted · 1 host silent"
        busy.stop()  # a clean stop takes its report away
        assert {h["host"] for h in client.get("/api/health").json()["hosts"]} == {"cpu-box", "old-box"}
        assert parse_html(client.get("/").text).by_id("worker-status").text == "workers 1/1 · 1 host silent"


def test_reports_of_hosts_silent_for_an_hour_are_dropped(engine: Engine) -> None:
    reporters = [
        HostReporter(engine, status=lambda: PoolStatus(1, 1, 0, None), role="worker", interval=60, host=name)
        for name in ("crashed-box", "lost-box", "live-box")
    ]
    for reporter in reporters[:2]:
        reporter.report()
    with engine.begin() as conn:  # killed an hour ago (just over) and just under: only the first is forgotten
        conn.execute(update(WorkerHost).where(WorkerHost.host == "crashed-box").values(updated_at=_minutes_ago(61)))
        conn.execute(update(WorkerHost).where(WorkerHost.host == "lost-box").values(updated_at=_minutes_ago(59)))
    reporters[2].report()  # any host's next report
    with engine.connect() as conn:
        assert sorted(conn.execute(select(WorkerHost.host)).scalars()) == ["live-box", "lost-box"]


def test_a_worker_command_names_its_host_reports_it_and_takes_it_away_on_sigterm(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    run_id = add_run(engine, **TINY)
    env = {**os.environ, "COLLAPSEWATCH_HEARTBEAT_SECONDS": "0.2", "COLLAPSEWATCH_STALE_AFTER_SECONDS": "3",
           "COLLAPSEWATCH_WORKER_MEMORY_MB": "0"}  # fmt: skip
    argv = [sys.executable, "-m", "app", "worker", "--database-url", settings.database_url, "--workers", "1"]
    with _process([*argv, "--name", "box", "--poll-seconds", "0.2"], tmp_path / "worker.log", env) as worker:
        run = wait_until(lambda: (r := _db_run(engine, run_id))["status"] == "completed" and r, timeout=60)
        assert run["worker"] == f"box:{worker.pid}" and run["lease"] == 1
        with engine.connect() as conn:
            host = conn.execute(select(WorkerHost)).mappings().one()
        assert (host["host"], host["pid"], host["role"]) == ("box", worker.pid, "worker")
        assert (host["workers_configured"], host["workers_alive"]) == (1, 1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    with engine.connect() as conn:
        assert conn.execute(select(WorkerHost)).all() == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--poll-seconds", "0", "more than 0"), ("--poll-seconds", "soon", "a number"), ("--name", "a:b", "':'")],
)
def test_worker_flags_are_checked(flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["worker", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and message in error


def _db_run(engine: Engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Run).where(Run.id == run_id)).mappings().one()


def _minutes_ago(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


# --- hosts in network namespaces ---------------------------------------------------------------------------
@contextlib.contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own (so its whole group can be killed), killed on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class Server:
    """The API of the server on its veth address, with its token."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def run(self, run_id: int) -> dict[str, Any]:
        return self.http.get(f"/api/runs/{run_id}").raise_for_status().json()

    def hosts(self) -> dict[str, dict[str, Any]]:
        health = self.http.get("/api/health").raise_for_status().json()
        return {h["host"]: h for h in health["hosts"]}

    def steps(self, run_id: int) -> list[int]:
        params = {"since_step": -1, "max_points": 0, "columns": "loss"}
        return list(self.http.get(f"/api/runs/{run_id}/stats", params=params).raise_for_status().json()["steps"])


def _running_on(server: Server, ids: list[int], host: str, min_steps: int, skip: tuple[int, ...] = ()) -> Any:
    """A run of `ids` (none of `skip`) that `host` is training with at least `min_steps` stored, or None."""
    for run_id in ids:
        if run_id in skip:
            continue
        run = server.run(run_id)
        if run["status"] == "running" and str(run["worker"]).startswith(f"{host}:") and run["steps"] >= min_steps:
            return run
    return None


def _seconds_to_lost(server: Server, run_id: int, since: datetime) -> tuple[dict[str, Any], float]:
    """The run once marked lost, and how long after `since` the reaper marked it (its finished_at)."""
    run = wait_until(lambda: (r := server.run(run_id))["status"] != "running" and r, timeout=30, interval=0.1)
    return run, (datetime.fromisoformat(run["finished_at"]) - since).total_seconds()


@pytest.mark.postgres
@pytest.mark.slow
def test_runs_spread_over_hosts_and_a_host_cut_off_or_killed_loses_only_its_run(pg_url: str, tmp_path: Path) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    database = make_url(pg_url)
    target = (database.host or "127.0.0.1", database.port or 5432)
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "COLLAPSEWATCH_TOKEN": token, "COLLAPSEWATCH_HEARTBEAT_SECONDS": str(BEAT),
           "COLLAPSEWATCH_STALE_AFTER_SECONDS": str(STALE), "COLLAPSEWATCH_REAP_INTERVAL_SECONDS": str(REAP),
           "COLLAPSEWATCH_WORKER_MEMORY_MB": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Network(3))
        port = _free_port(net.bridge_ip)
        # PostgreSQL listens on 127.0.0.1 only: the forwarder makes it reachable on the bridge, its rules unchanged
        stack.enter_context(Forwarder((net.bridge_ip, target[1]), target, keepalive=session_keepalive(STALE)))
        remote = database.set(host=net.bridge_ip).render_as_string(hide_password=False)
        serve = [sys.executable, "-m", "app", "serve", "--host", net.bridge_ip, "--port", str(port), "--workers", "0"]
        serve += ["--database-url", pg_url, "--data-dir", str(tmp_path / "data")]
        stack.enter_context(_process(serve, tmp_path / "serve.log", env))
        worker = [sys.executable, "-m", "app", "worker", "--database-url", remote, "--workers", "1"]
        names = ["cw-host-a", "cw-host-b", "host-c"]  # a and b by their host names, c by --name
        hosts = [
            stack.enter_context(_process(net.command(0, names[0], worker), tmp_path / "a.log", env)),
            stack.enter_context(_process(net.command(1, names[1], worker), tmp_path / "b.log", env)),
            stack.enter_context(_process(net.command(2, "c", [*worker, "--name", names[2]]), tmp_path / "c.log", env)),
        ]
        server = Server(f"http://{net.bridge_ip}:{port}", token)
        stack.callback(server.http.close)
        try:
            _scenario(server, net, hosts, names, pg_url)
        except BaseException:
            for log in sorted(tmp_path.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
            raise


def _scenario(server: Server, net: Network, hosts: list[Any], names: list[str], pg_url: str) -> None:
    def all_up() -> bool:
        try:
            seen = server.hosts()
        except httpx.HTTPError:
            return False
        return all(n in seen and not seen[n]["stale"] and seen[n]["workers_alive"] == 1 for n in names)

    wait_until(all_up, timeout=60, interval=0.2, what="three hosts reporting their workers")
    started = time.monotonic()
    ids = [
        server.http.post("/api/runs", json={"config": config(RUN)}).raise_for_status().json()["id"] for _ in range(6)
    ]
    a, b, c = names
    run_a = wait_until(lambda: _running_on(server, ids, a, 30), timeout=30, interval=0.05, what="host a mid-run")
    first_b = wait_until(lambda: _running_on(server, ids, b, 0), timeout=30, interval=0.05, what="host b's first run")
    wait_until(lambda: _running_on(server, ids, c, 0), timeout=30, interval=0.05, what="host c's first run")

    # host a's cable is pulled mid-run; host b is killed (kill -9, its whole process group) mid its second run
    flushed_a = server.run(run_a["id"])["steps"]
    cut_at = datetime.now(UTC)
    net.cut(0)
    run_b = wait_until(lambda: _running_on(server, ids, b, 30, skip=(first_b["id"],)), timeout=40, interval=0.05)
    flushed_b = server.run(run_b["id"])["steps"]
    killed_at = datetime.now(UTC)
    os.killpg(hosts[1].pid, signal.SIGKILL)
    # each is marked lost within the stale limit (and the reaper's confirmation), keeping what it flushed
    lost_a, after_a = _seconds_to_lost(server, run_a["id"], cut_at)
    lost_b, after_b = _seconds_to_lost(server, run_b["id"], killed_at)
    bound = STALE + confirm_window(BEAT) + REAP + 1.0
    print(f"\nmarked lost after: cable pulled {after_a:.1f} s, kill -9 {after_b:.1f} s (stale limit {STALE:g} s)")
    for lost, host, flushed, after in ((lost_a, a, flushed_a, after_a), (lost_b, b, flushed_b, after_b)):
        assert lost["status"] == "failed", lost
        assert lost["error"].startswith("worker lost (no heartbeat since ") and f"worker {host}:" in lost["error"]
        assert STALE - BEAT - 0.2 < after < bound, after  # not before its heartbeat was stale, nor long after
        assert lost["steps"] >= flushed and server.steps(lost["id"]) == list(range(lost["steps"]))

    # host c (and b before its death) train every other run to its end
    wait_until(lambda: all(server.run(i)["status"] in ("completed", "failed") for i in ids), timeout=90)
    runs = {i: server.run(i) for i in ids}
    print(f"6 runs on 3 hosts in {time.monotonic() - started:.1f} s: " + ", ".join(
        f"#{i} {r['worker'].split(':')[0]} {r['status']} {r['steps']}" for i, r in runs.items()))  # fmt: skip
    by_host = {n: sorted(i for i, r in runs.items() if r["worker"].startswith(f"{n}:")) for n in names}
    assert by_host[a] == [run_a["id"]] and by_host[b] == sorted([first_b["id"], run_b["id"]])
    assert len(by_host[c]) == 3 and sorted(i for runs_of in by_host.values() for i in runs_of) == ids
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            leases = dict(conn.execute(select(Run.id, Run.lease).where(Run.id.in_(ids))).all())
    finally:
        engine.dispose()
    for run_id, run in runs.items():
        if run_id in (run_a["id"], run_b["id"]):
            assert run["status"] == "failed" and leases[run_id] == 2  # claimed once, marked once
            continue
        # trained once, by one worker, each step exactly once
        assert run["status"] == "completed" and leases[run_id] == 1, run
        assert server.steps(run_id) == list(range(run["steps"])) and run["steps"] == RUN["epochs"] * run["info"][
            "steps_per_epoch"]  # fmt: skip

    seen = server.hosts()  # a and b fell silent; c still reports its worker
    assert (seen[a]["stale"], seen[b]["stale"], seen[c]["stale"], seen[c]["workers_alive"]) == (True, True, False, 1)
    header = parse_html(server.http.get("/").text).by_id("worker-status")
    assert header.text == "workers 1/1 · 2 hosts silent"


def test_the_header_reads_the_hosts_at_most_every_two_seconds(
    app: FastAPI, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.pages.rendering.HEADER_SECONDS", 2.0)
    box = HostReporter(engine, status=lambda: PoolStatus(2, 2, 0, None), role="worker", interval=60, host="box")
    box.report()
    with TestClient(app, base_url=LOCAL) as client:
        assert parse_html(client.get("/").text).by_id("worker-status").text == "workers 2/2"
        box.stop()  # gone from the database, still in the header for up to 2 s
        assert parse_html(client.get("/").text).by_id("worker-status").text == "workers 2/2"
        monkeypatch.setattr("app.pages.rendering.HEADER_SECONDS", 0.0)
        page = parse_html(client.get("/").text)
        assert not [el for el in page.iter() if el.attrs.get("id") == "worker-status"], "no worker: no count shown"


def test_with_a_token_health_lists_the_hosts_only_to_requests_that_carry_it(settings: Settings, engine: Engine) -> None:
    app = create_app(settings.model_copy(update={"token": "s3cret-token-for-tests"}))
    box = HostReporter(app.state.engine, status=lambda: PoolStatus(1, 1, 0, None), role="worker", interval=60,
                       host="secret-box")  # fmt: skip
    box.report()
    with TestClient(app, base_url=LOCAL) as client:
        anonymous = client.get("/api/health")
        assert anonymous.status_code == 200 and anonymous.json()["hosts"] == [], "the probe answers, names nothing"
        carried = client.get("/api/health", headers={"Authorization": "Bearer s3cret-token-for-tests"}).json()
        assert [h["host"] for h in carried["hosts"]] == ["secret-box"]
    box.stop()
