"""A soak of a real `collapsewatch serve --workers 4`: a fed queue, 20 SSE clients, a 40 s exclusive SQLite
lock from outside and one worker SIGKILLed mid-run; then every run's rows, the pool, the answers and the reaper.

Run: `.venv/bin/python -m bench.soak [--seconds 120] [--record]`; exits 1 when a must-hold figure fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.core.config import Settings
from app.storage.models import FINISHED_STATUSES
from app.worker.claim import LOST_PREFIX
from bench.common import append_results, machine_line
from bench.live_server import load_average, serve

# tests/factories.py's LONG model and data (7 batches an epoch); epochs per run drawn from --epochs
RUN_CONFIG = {"batch_size": 32, "hidden_sizes": [16], "data": {"n_samples": 256}}


@dataclass
class Followed:
    """What one SSE client received of one run, over all its reconnects."""

    run_id: int
    steps: list[int] = field(default_factory=list)
    final: str | None = None  # the final status event's status
    last_id: str | None = None
    last_stats_at: float | None = None
    reconnects: int = 0


@dataclass
class Tally:
    t0: float = field(default_factory=time.monotonic)
    codes: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    other_5xx: list[str] = field(default_factory=list)
    answers_503: list[tuple[float, bool]] = field(default_factory=list)  # (request sent at, had Retry-After)
    client_errors: list[str] = field(default_factory=list)
    post_seconds: list[float] = field(default_factory=list)
    submitted: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    watchers: Counter[int] = field(default_factory=Counter)
    followed: list[Followed] = field(default_factory=list)
    stats_gaps: list[tuple[int, float, float]] = field(default_factory=list)  # run, previous event, this one
    beat_ages: list[tuple[int, float, float]] = field(default_factory=list)  # run, seen at, heartbeat age
    health: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # seen at, /api/health
    lock: dict[str, Any] = field(default_factory=dict)
    kill: dict[str, Any] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, kind: str, sent_at: float, response: httpx.Response) -> None:
        self.codes[kind][response.status_code] += 1
        if response.status_code == 503:
            self.answers_503.append((sent_at, "retry-after" in response.headers))
        elif response.status_code >= 500:
            self.other_5xx.append(f"{kind} {response.status_code} at {sent_at:.0f} s: {response.text[:200]}")


async def call(client: httpx.AsyncClient, tally: Tally, kind: str, method: str, url: str, **kw: Any) -> Any:
    """The response (counted), or None after a transport error (counted too)."""
    sent_at = tally.now()
    try:
        response = await client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        tally.client_errors.append(f"{kind} at {sent_at:.0f} s: {type(exc).__name__}: {exc}")
        return None
    tally.note(kind, sent_at, response)
    return response


async def get_json(client: httpx.AsyncClient, tally: Tally, kind: str, url: str, **params: Any) -> Any:
    response = await call(client, tally, kind, "GET", url, params=params or None)
    return response.json() if response is not None and response.status_code == 200 else None


# --- load: the submitter, the SSE clients, the monitor -------------------------------------------------
async def submit_one(client: httpx.AsyncClient, tally: Tally, epochs: int) -> httpx.Response | None:
    config = {**RUN_CONFIG, "epochs": epochs}
    body = {"preset": "fixed", "config": config, "name": f"soak #{len(tally.submitted)}"}
    sent = time.monotonic()
    # a write waits for a held lock up to SQLite's busy timeout (30 s) before the 503
    response = await call(client, tally, "POST /api/runs", "POST", "/api/runs", json=body, timeout=90.0)
    tally.post_seconds.append(time.monotonic() - sent)
    if response is not None and response.status_code == 201:
        tally.submitted.append(response.json()["id"])
    return response


async def warm_up(client: httpx.AsyncClient, tally: Tally, args: argparse.Namespace, rng: random.Random) -> float:
    """Queue the first runs and wait until every worker trains one: spawned workers import torch, ~20 s on 2
    busy cores. The soak's clock (lock, kill, end of submitting) starts then; returns the seconds waited."""
    started = time.monotonic()
    for _ in range(args.workers + args.ahead):
        await submit_one(client, tally, rng.randint(*args.epochs))
    while time.monotonic() - started < 120:
        page = await get_json(client, tally, "GET /api/runs?status=running", "/api/runs", status="running", limit=1)
        if page is not None and page["total"] >= args.workers:
            break
        await asyncio.sleep(0.5)
    tally.t0 = time.monotonic()
    return tally.t0 - started


async def submit_runs(client: httpx.AsyncClient, tally: Tally, args: argparse.Namespace, rng: random.Random) -> None:
    """Keep `args.ahead` runs queued until `args.seconds`; after a 503, wait its Retry-After."""
    while tally.now() < args.seconds:
        page = await get_json(client, tally, "GET /api/runs?status=queued", "/api/runs", status="queued", limit=1)
        for _ in range(max(0, args.ahead - page["total"]) if page else 0):
            response = await submit_one(client, tally, rng.randint(*args.epochs))
            if response is not None and response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", 5)))
                break
        await asyncio.sleep(1.0)


def _on_event(tally: Tally, seen: Followed, kind: str, data: str) -> None:
    body = json.loads(data)
    if kind == "stats":
        seen.steps += body["steps"]
        now = tally.now()
        if seen.last_stats_at is not None:
            tally.stats_gaps.append((seen.run_id, seen.last_stats_at, now))
        seen.last_stats_at = now
    elif kind == "status" and body["status"] in FINISHED_STATUSES:
        seen.final = body["status"]


async def _read_stream(response: httpx.Response, tally: Tally, seen: Followed) -> None:
    kind, data = None, []
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            seen.last_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and kind:
            _on_event(tally, seen, kind, "\n".join(data))
            kind, data = None, []
            if seen.final:
                return


async def follow(client: httpx.AsyncClient, tally: Tally, run_id: int, deadline: float) -> Followed:
    """A run's events from its first step to its final status, resuming with Last-Event-ID when a stream ends."""
    seen = Followed(run_id)
    while seen.final is None and tally.now() < deadline and seen.reconnects < 100:
        headers = {"Last-Event-ID": seen.last_id} if seen.last_id else {}
        sent_at, pause = tally.now(), 0.5
        try:
            async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as response:
                tally.note("GET /events (SSE)", sent_at, response)
                if response.status_code == 204:  # resumed after the final status: nothing follows
                    seen.final = seen.final or "(204)"
                elif response.status_code != 200:
                    await response.aread()
                    pause = float(response.headers.get("retry-after", 1))
                else:
                    await _read_stream(response, tally, seen)
        except httpx.HTTPError as exc:
            tally.client_errors.append(f"SSE run {run_id} at {sent_at:.0f} s: {type(exc).__name__}: {exc}")
        if seen.final is None:
            seen.reconnects += 1
            await asyncio.sleep(pause)
    return seen


async def poll_stats(client: httpx.AsyncClient, tally: Tally, run_id: int) -> None:
    while True:
        await asyncio.sleep(random.uniform(2.0, 5.0))
        await call(client, tally, "GET /stats", "GET", f"/api/runs/{run_id}/stats", params={"max_points": 500})


async def sse_client(client: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    """Follow the running run with the fewest followers, to its end; then the next, until told to stop."""
    done: set[int] = set()
    while not tally.stop.is_set() and tally.now() < deadline:
        choices = [r for r in tally.running if r not in done]
        if not choices:
            await asyncio.sleep(0.5)
            continue
        run_id = min(choices, key=lambda r: (tally.watchers[r], random.random()))
        done.add(run_id)
        tally.watchers[run_id] += 1
        poller = asyncio.create_task(poll_stats(client, tally, run_id))
        try:
            tally.followed.append(await follow(client, tally, run_id, deadline))
        finally:
            poller.cancel()
            tally.watchers[run_id] -= 1


async def monitor(client: httpx.AsyncClient, tally: Tally) -> None:
    """Each second: the running runs (for the clients), how old each one's heartbeat is, and /api/health."""
    while not tally.stop.is_set():
        health = await get_json(client, tally, "GET /api/health", "/api/health")
        if health is not None:
            tally.health.append((tally.now(), health))
        page = await get_json(client, tally, "GET /api/runs?status=running", "/api/runs", status="running", limit=100)
        if page is not None:
            tally.running = [r["id"] for r in page["items"]]
        for run_id in list(tally.running):
            run = await get_json(client, tally, "GET /api/runs/{id}", f"/api/runs/{run_id}")
            if run and run["status"] == "running" and run["heartbeat_at"]:
                age = datetime.now(UTC) - datetime.fromisoformat(run["heartbeat_at"])
                tally.beat_ages.append((run_id, tally.now(), age.total_seconds()))
        await asyncio.sleep(1.0)


# --- the faults: an outside lock, a killed worker -------------------------------------------------------
def hold_lock(db: Path, tally: Tally, at: float, seconds: float, stop: threading.Event) -> None:
    """At `at` s, BEGIN EXCLUSIVE on the server's file from a connection of our own; ROLLBACK `seconds` later."""
    if stop.wait(max(0.0, at - tally.now())):
        return
    con = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    try:
        tally.lock["asked"] = tally.now()
        con.execute("BEGIN EXCLUSIVE")
        tally.lock["acquired"] = tally.now()
        stop.wait(seconds)
        con.execute("ROLLBACK")
        tally.lock["released"] = tally.now()
    except sqlite3.Error as exc:
        tally.lock["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if con.in_transaction:
            con.rollback()
            tally.lock.setdefault("released", tally.now())
        con.close()


def parent_pid(pid: int) -> int | None:
    try:  # /proc/<pid>/stat: "pid (comm) state ppid ...", and comm may hold spaces or parentheses
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def kill_a_worker(client: httpx.AsyncClient, tally: Tally, server_pid: int, at: float) -> None:
    """At `at` s, SIGKILL the worker of a run between 10% and 60% of its steps: only a child of our server."""
    await asyncio.sleep(max(0.0, at - tally.now()))
    while tally.now() < at + 30 and not tally.stop.is_set():
        for run_id in list(tally.running):
            run = await get_json(client, tally, "GET /api/runs/{id}", f"/api/runs/{run_id}")
            if not run or run["status"] != "running" or not run["info"] or not run["worker"]:
                continue
            total = run["info"]["steps_per_epoch"] * run["config"]["epochs"]
            host, _, pid_text = run["worker"].rpartition(":")
            if not 0.1 * total <= run["steps"] <= 0.6 * total or host != socket.gethostname():
                continue
            pid = int(pid_text)
            if parent_pid(pid) != server_pid:
                tally.kill.setdefault("refused", []).append(f"pid {pid} (run {run_id}) is not our server's child")
                continue
            os.kill(pid, signal.SIGKILL)
            tally.kill.update(run_id=run_id, pid=pid, at=tally.now(), steps=run["steps"], total=total)
            return
        await asyncio.sleep(0.3)


# --- the soak -------------------------------------------------------------------------------------------
async def drain(client: httpx.AsyncClient, tally: Tally, seconds: float) -> bool:
    """Wait until nothing is queued or running; False if that took longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        queued = await get_json(client, tally, "GET /api/runs?status=queued", "/api/runs", status="queued", limit=1)
        running = await get_json(client, tally, "GET /api/runs?status=running", "/api/runs", status="running", limit=1)
        if queued is not None and running is not None and queued["total"] == running["total"] == 0:
            return True
        await asyncio.sleep(1.0)
    return False


async def final_health(client: httpx.AsyncClient, tally: Tally, seconds: float = 20.0) -> dict[str, Any]:
    """/api/health once every configured worker is alive again (or after `seconds`)."""
    deadline, health = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        health = await get_json(client, tally, "GET /api/health", "/api/health") or health
        if health and health["workers_alive"] == health["workers_configured"]:
            break
        await asyncio.sleep(1.0)
    return health


async def soak(base: str, server_pid: int, db: Path, args: argparse.Namespace, tally: Tally) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=60)
    lock_stop = threading.Event()
    hard_deadline = args.seconds + args.drain_seconds + 60
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(45.0, connect=5.0), limits=limits) as client:
        rng = random.Random(0)
        facts["warm_up"] = await warm_up(client, tally, args, rng)
        locker = asyncio.create_task(
            asyncio.to_thread(hold_lock, db, tally, args.lock_at, args.lock_seconds, lock_stop)
        )
        helpers = [
            asyncio.create_task(monitor(client, tally)),
            asyncio.create_task(kill_a_worker(client, tally, server_pid, args.kill_at)),
            *(asyncio.create_task(sse_client(client, tally, hard_deadline)) for _ in range(args.clients)),
        ]
        try:
            await submit_runs(client, tally, args, rng)
            facts["submitting_ended"] = tally.now()
            facts["drained"] = await drain(client, tally, args.drain_seconds)
            facts["drained_at"] = tally.now()
            tally.stop.set()
            await asyncio.wait(helpers, timeout=60)
            facts["health"] = await final_health(client, tally)
        finally:
            tally.stop.set()
            lock_stop.set()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await asyncio.wait_for(locker, timeout=45)
    return facts


# --- the verdict ----------------------------------------------------------------------------------------
def stored_runs(db: Path) -> dict[int, dict[str, Any]]:
    """Each run as the database holds it, with its stored batch steps decoded (a hole or a repeat shows)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        chunks: dict[int, list[np.ndarray]] = defaultdict(list)
        for run_id, blob in con.execute("SELECT run_id, steps FROM statchunk ORDER BY run_id, first_step"):
            chunks[run_id].append(np.frombuffer(blob, dtype=np.int64))
        runs = {}
        query = "SELECT id, status, steps, config, info, error, data_lost FROM run ORDER BY id"
        for run_id, status, steps, config, info, error, data_lost in con.execute(query):
            stored = np.concatenate(chunks[run_id]) if chunks[run_id] else np.zeros(0, np.int64)
            info = json.loads(info) if info else None
            runs[run_id] = {
                "status": status,
                "steps": steps,  # the run's own count, kept by the sink with each chunk
                "stored": len(stored),
                "in_order": bool(np.array_equal(stored, np.arange(len(stored)))),
                "trained": info["steps_per_epoch"] * json.loads(config)["epochs"] if info else None,
                "error": error,
                "data_lost": data_lost,
            }
    finally:
        con.close()
    return runs


def _overlaps(start: float, end: float, window: tuple[float, float] | None) -> bool:
    return window is not None and start <= window[1] and end >= window[0]


def _longest(values: list[float]) -> str:
    return f"{max(values):.1f} s" if values else "-"


@dataclass
class Verdict:
    """The result block's lines, and the must-hold figures that failed."""

    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def must(self, name: str, bad: object) -> None:
        if bad:
            self.failed.append(name)


def judge_runs(verdict: Verdict, runs: dict[int, dict[str, Any]], tally: Tally) -> None:
    """Rows stored vs trained, runs lost, runs reaped while alive, and what the SSE clients received."""
    killed = tally.kill.get("run_id")
    done = [i for i, r in runs.items() if r["status"] == "completed"]
    short = [i for i in done if _short(runs[i])]
    lost = sorted(
        i
        for i, r in runs.items()
        if r["status"] not in FINISHED_STATUSES  # never reached a final state
        or (r["status"] == "completed" and _short(r))
        or (r["status"] in ("failed", "diverged") and not r["error"])
        or not r["in_order"]  # a hole or a repeat in what a run kept, whatever its status
        or r["stored"] != r["steps"]
    )
    others = [
        f"run {i} {r['status']}: {r['error']}" for i, r in runs.items() if r["status"] != "completed" and i != killed
    ]
    reaped = [
        f"run {i} ({r['status']}): {r['error']}"
        for i, r in runs.items()
        if i != killed and LOST_PREFIX in (r["error"] or "")
    ]
    by_status = dict(Counter(r["status"] for r in runs.values()))
    verdict.lines += [
        f"- Runs: {len(tally.submitted)} submitted, by status {by_status}. Completed runs whose stored batch rows "
        f"are steps 0..n-1 with n = steps trained (epochs x batches per epoch): {len(done) - len(short)} of "
        f"{len(done)}" + (f"; not: {short[:10]}" if short else "") + ".",
        f"- Runs lost (never finished, rows missing, or failed without a reason): {len(lost)}"
        + (f" {lost[:10]}" if lost else "")
        + f". Not completed, besides the killed worker's: {len(others)}."
        + "".join(f"\n  - {o[:300]}" for o in others[:5]),
        f'- Live runs marked "worker lost" (besides the killed worker\'s): {len(reaped)}.'
        + "".join(f"\n  - {r[:300]}" for r in reaped[:5]),
    ]
    verdict.must("runs lost", lost)
    verdict.must("runs not completed", others)
    verdict.must("live runs marked lost", reaped)


def _short(run: dict[str, Any]) -> bool:
    return not run["in_order"] or run["stored"] != run["trained"]


def judge_streams(verdict: Verdict, runs: dict[int, dict[str, Any]], tally: Tally) -> None:
    """Each stream followed to a final status must have had every stored step once, and the run's own end."""
    ended = [f for f in tally.followed if f.final and f.run_id in runs]
    missing = [f for f in ended if f.steps != list(range(runs[f.run_id]["stored"]))]
    wrong_end = [f for f in ended if f.final not in ("(204)", runs[f.run_id]["status"])]
    by_run: dict[int, list[Followed]] = defaultdict(list)
    for f in missing + [f for f in wrong_end if f not in missing]:
        by_run[f.run_id].append(f)
    details = [
        f"run {run_id}: {len(fs)} streams ended with status {sorted({f.final or '' for f in fs})} after "
        f"{sorted({len(f.steps) for f in fs})} steps; the run has {runs[run_id]['stored']} stored and ended "
        f"{runs[run_id]['status']}"
        for run_id, fs in sorted(by_run.items())
    ]
    verdict.lines.append(
        f"- SSE: {len(tally.followed)} streams (a client following a run from step 0), "
        f"{sum(f.reconnects for f in tally.followed)} reconnects with Last-Event-ID; of {len(ended)} followed to a "
        f"final status, with every stored step once and in order: {len(ended) - len(missing)}, with the run's own "
        f"final status: {len(ended) - len(wrong_end)}." + "".join(f"\n  - {d}" for d in details[:5])
    )
    verdict.must("streams with missing steps", missing)
    verdict.must("streams that got a wrong final status", wrong_end)


def judge_faults(
    verdict: Verdict,
    runs: dict[int, dict[str, Any]],
    tally: Tally,
    health: dict[str, Any],
    lock_seconds: float,
    stale_after: float,
) -> None:
    """The lock and the killed worker: that they happened, the killed run's end, and the pool's replacement."""
    lock, kill = tally.lock, tally.kill
    held = lock["released"] - lock["acquired"] if "acquired" in lock and "released" in lock else 0.0
    verdict.lines.append(
        f"- Lock: BEGIN EXCLUSIVE asked at {lock.get('asked', float('nan')):.1f} s, held from "
        f"{lock.get('acquired', float('nan')):.1f} s for {held:.1f} s, then ROLLBACK"
        + (f"; {lock['error']}" if "error" in lock else "")
        + "."
    )
    verdict.must("the lock was not held", held < lock_seconds - 1.0)
    run = runs.get(kill.get("run_id", -1))
    if run is None:
        verdict.lines.append(f"- Killed worker: none ({kill.get('refused') or 'no running run at 10-60% found'}).")
    else:
        verdict.lines.append(
            f"- Killed worker: pid {kill['pid']} (its parent: the server) at {kill['at']:.1f} s, training run "
            f"{kill['run_id']} at step {kill['steps']} of {kill['total']}. The run: {run['status']}, error "
            f"{run['error']!r}; steps kept {run['stored']} (its steps field {run['steps']}, 0..n-1: "
            f"{run['in_order']}); data_lost {run['data_lost']!r}."
        )
        verdict.must(
            "the killed worker's run did not fail with a reason", run["status"] != "failed" or not run["error"]
        )
    verdict.must("no worker was killed", run is None)
    alive, configured, restarts = (health.get(k) for k in ("workers_alive", "workers_configured", "worker_restarts"))
    verdict.lines.append(
        f"- Pool at the end (/api/health): workers_alive {alive} of {configured}, worker_restarts {restarts}, "
        f"last_worker_exit {health.get('last_worker_exit')!r}, status {health.get('status')!r}."
    )
    verdict.must("the pool did not replace the worker", not configured or alive != configured or (restarts or 0) < 1)
    statuses = Counter(h["status"] for _, h in tally.health)
    back = next((t for t, h in tally.health if t > kill.get("at", 1e9) and h["worker_restarts"] >= 1), None)
    window = (lock.get("acquired", 0.0), lock.get("released", 0.0))
    busy = [h["busy_workers"] for t, h in tally.health if window[0] + stale_after + 1 <= t <= window[1]]
    verdict.lines.append(
        f"- /api/health each second: status {dict(statuses)}; the replacement counted "
        + (f"{back - kill['at']:.1f} s after the kill" if back is not None and "at" in kill else "never")
        + f"; busy_workers while the lock held every heartbeat back over {stale_after:g} s: "
        + f"{sorted(set(busy)) or 'no sample'}."
    )


def judge_answers(verdict: Verdict, tally: Tally, server_log: str) -> None:
    """Every HTTP status by endpoint class, the 5xx, and how late heartbeats and statistics got."""
    lock = tally.lock
    window = (lock["asked"] - 2.0, lock["released"]) if "asked" in lock and "released" in lock else None
    outside = [sent for sent, _ in tally.answers_503 if not _overlaps(sent, sent, window)]
    bare = sum(1 for _, has_retry_after in tally.answers_503 if not has_retry_after)
    killed = tally.kill.get("run_id")
    ages = [(seen - age, seen, age) for run, seen, age in tally.beat_ages if run != killed]
    gaps = [(a, b, b - a) for run, a, b in tally.stats_gaps if run != killed]
    codes = "; ".join(f"{k} {dict(sorted(c.items()))}" for k, c in sorted(tally.codes.items()))
    patterns = (
        "database is locked",
        "write failed",
        "heartbeat failed",
        "claiming failed",
        "reaping stale runs failed",
    )
    patterns += ("marked failed", "taken back", "could not be stored", "Traceback")
    verdict.lines += [
        f"- HTTP status codes: {codes}.",
        f"- 5xx other than 503: {len(tally.other_5xx)}. 503: {len(tally.answers_503)} ({len(outside)} of them sent "
        f"outside the lock), without Retry-After: {bare}. Transport errors: {len(tally.client_errors)}. Slowest "
        f"POST /api/runs: {_longest(tally.post_seconds)}.",
        f"- Longest heartbeat age seen (live runs): {_longest([a for *_, a in ages])}; away from the lock: "
        f"{_longest([a for s, e, a in ages if not _overlaps(s, e, window)])}. Longest gap between two stats "
        f"events of a live run: {_longest([g for *_, g in gaps])}; away from the lock: "
        f"{_longest([g for s, e, g in gaps if not _overlaps(s, e, window)])}.",
        "- Server log: " + ", ".join(f"{server_log.count(p)} '{p}'" for p in patterns) + ".",
    ]
    verdict.lines += [f"  - {e[:300]}" for e in (tally.other_5xx + tally.client_errors)[:5]]
    verdict.must("5xx other than 503", tally.other_5xx)
    verdict.must("503 outside the lock", outside)
    verdict.must("503 without Retry-After", bare)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long runs are submitted")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=20, help="SSE clients")
    parser.add_argument("--ahead", type=int, default=4, help="runs kept queued")
    parser.add_argument("--epochs", type=int, nargs=2, default=(40, 80), help="epochs per run (7 batches each)")
    parser.add_argument("--lock-at", type=float, default=25.0)
    parser.add_argument("--lock-seconds", type=float, default=40.0)
    parser.add_argument("--kill-at", type=float, default=80.0)
    parser.add_argument("--drain-seconds", type=float, default=180.0)
    parser.add_argument("--record", action="store_true", help="append the result block to bench/RESULTS.md")
    args = parser.parse_args()
    settings = Settings()  # what the server reads from COLLAPSEWATCH_* too
    tmp = Path(tempfile.mkdtemp(prefix="cw-soak-"))
    db, log = tmp / "cw.db", tmp / "server.log"
    load_before, started = load_average(), time.monotonic()
    with serve(db, log, workers=args.workers) as server:
        tally = Tally()
        try:
            limit = args.seconds + args.drain_seconds + 300  # the warm-up, the helpers, the lock
            facts = asyncio.run(asyncio.wait_for(soak(server.base, server.pid, db, args, tally), limit))
        except TimeoutError:
            facts = {"timed_out": True}
        load_end = load_average()
    runs, verdict = stored_runs(db), Verdict()
    judge_runs(verdict, runs, tally)
    judge_streams(verdict, runs, tally)
    judge_faults(verdict, runs, tally, facts.get("health") or {}, args.lock_seconds, settings.stale_after_seconds)
    judge_answers(verdict, tally, log.read_text(errors="replace"))
    verdict.must(
        "the queue did not drain" + (" (the soak timed out)" if "timed_out" in facts else ""), not facts.get("drained")
    )
    lines = [
        f"### Soak: {args.workers} workers, {args.clients} SSE clients, a held SQLite lock and a killed worker "
        "(bench/soak.py)",
        "",
        f"{machine_line()}; {load_before} before, {load_end} at the end. `collapsewatch serve --workers "
        f"{args.workers}` on a fresh SQLite file (heartbeat {settings.heartbeat_seconds:g} s, stale after "
        f"{settings.stale_after_seconds:g} s, reaper every {settings.reap_interval_seconds:g} s); fixed-preset runs "
        f"of {args.epochs[0]}-{args.epochs[1]} epochs x 7 batches submitted over POST /api/runs for "
        f"{args.seconds:.0f} s, {args.ahead} kept queued; {args.clients} SSE clients following live runs from step 0 "
        f"(resuming with Last-Event-ID) and polling /stats every 2-5 s; BEGIN EXCLUSIVE held from outside for "
        f"{args.lock_seconds:.0f} s from {args.lock_at:.0f} s; one worker SIGKILLed at {args.kill_at:.0f} s; then "
        f"the queue drained ({facts.get('drained_at', float('nan')):.0f} s). Times from the moment all workers were "
        f"training ({facts.get('warm_up', float('nan')):.0f} s after the server answered); "
        f"{time.monotonic() - started:.0f} s in all.",
        "",
        *verdict.lines,
        f"- Must hold: {'all held' if not verdict.failed else 'FAILED: ' + '; '.join(verdict.failed)}.",
    ]
    print("\n".join(lines))
    print(f"(server log and database: {tmp})", file=sys.stderr)
    if args.record:
        append_results(lines)
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    sys.exit(main())
