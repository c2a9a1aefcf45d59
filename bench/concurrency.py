"""4 workers and 20 browsers on one SQLite file: "database is locked", lost rows, API latency, SSE gaps.

A real `collapsewatch serve --workers 4` subprocess trains queued runs while 20 httpx clients do what
dashboard tabs do (list poll every 2 s; a run page's first load and its SSE stream), plus real Chromium
tabs on run pages. Run: `.venv/bin/python -m bench.concurrency [--seconds 120] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import append_results, machine_line
from bench.live_server import chromium, cpu_seconds, load_average, serve
from bench.page_clients import FINISHED, Tally, browse, timed_get

PAGE_HOOKS = Path(__file__).with_name("latency_page.js")
PAGE_STATE = """() => window.__cwLatency.status
    || (document.body.dataset.chartsReady && !window.__cwLatency.opened ? "no stream" : null)"""


async def keep_queue_full(base: str, tally: Tally, seconds: float, ahead: int, epochs: tuple[int, int]) -> int:
    """Queue runs so that `ahead` are always waiting, for `seconds`; returns how many were queued."""
    rng, queued = random.Random(0), 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        while time.monotonic() < deadline:
            page = await timed_get(client, tally, "GET /api/runs?status=queued", "/api/runs", status="queued", limit=1)
            for _ in range(max(0, ahead - (page or {"total": ahead})["total"])):
                body = {"preset": "fixed", "config": {"epochs": rng.randint(*epochs)}, "name": f"load #{queued}"}
                started = time.perf_counter()
                try:
                    response = await client.post("/api/runs", json=body)
                except httpx.HTTPError as exc:
                    tally.client_errors.append(f"POST /api/runs: {type(exc).__name__}: {exc}")
                    continue
                tally.note("POST /api/runs", time.perf_counter() - started, response)
                queued += response.status_code == 201
            await asyncio.sleep(1.0)
    return queued


async def drain(base: str, wait_seconds: float) -> list[int]:
    """Cancel what is still queued and wait for the running runs to end; returns the cancelled ids."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        queued = (await client.get("/api/runs", params={"status": "queued", "limit": 1000})).json()["items"]
        for run in queued:
            await client.post(f"/api/runs/{run['id']}/cancel")
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if (await client.get("/api/runs", params={"status": "running", "limit": 1})).json()["total"] == 0:
                break
            await asyncio.sleep(1.0)
    return [r["id"] for r in queued]


def watch_in_chromium(base: str, tally: Tally, seconds: float, out: dict[str, Any]) -> None:
    """One real Chromium tab on the page of a running run, moving on when it finishes: per stats event,
    SSE arrival → drawn, and the page's errors."""
    lags, errors, pages = [], [], 0
    deadline = time.monotonic() + seconds
    with chromium() as browser:
        while time.monotonic() < deadline:
            if not tally.running:
                time.sleep(0.5)
                continue
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.add_init_script(path=str(PAGE_HOOKS))
            page.goto(f"{base}/runs/{random.choice(tally.running)}", timeout=60_000)
            pages += 1
            idle = 0  # checks in a row with the charts drawn and no stream: the run had ended already
            while time.monotonic() < deadline and idle < 4:
                state = page.evaluate(PAGE_STATE)
                if state in FINISHED:
                    break
                idle = idle + 1 if state == "no stream" else 0
                page.wait_for_timeout(500)
            lags += _page_lags(page.evaluate("() => window.__cwLatency"))
            page.close()
    out.update(lags=np.array(lags, dtype=float) / 1000, errors=errors, pages=pages)


def _page_lags(rec: dict[str, Any]) -> list[float]:
    """Per stats event: from its arrival to the first frame that drew its last step (ms)."""
    drawn = sorted((d[5], d[2]) for d in rec["drawn"] if d[0] == "chart-entropy")
    lags = []
    for _first, last, arrived in rec["arrived"]:
        at = next((t for t, step in drawn if step >= last), None)
        if at is not None:
            lags.append(at - arrived)
    return lags


def check_rows(db: Path) -> tuple[list[str], dict[str, int]]:
    """Compare each run's stored rows with what its trainer trained; problems and counts by status."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    stored: dict[int, list[np.ndarray]] = {}  # run id -> its chunks' steps, decoded: a hole or a repeat shows
    for run_id, blob in con.execute("SELECT run_id, steps FROM statchunk ORDER BY run_id, first_step"):
        stored.setdefault(run_id, []).append(np.frombuffer(blob, dtype=np.int64))
    evals = dict(con.execute("SELECT run_id, max(step) FROM evalstat GROUP BY run_id"))
    problems, by_status = [], {}
    for run_id, status, steps, config, info, error in con.execute(
        "SELECT id, status, steps, config, info, error FROM run"
    ):
        by_status[status] = by_status.get(status, 0) + 1
        run_steps = np.concatenate(stored.get(run_id, [np.zeros(0, np.int64)]))
        count = len(run_steps)
        if count != steps or not np.array_equal(run_steps, np.arange(count)):
            problems.append(f"run {run_id} ({status}): steps field {steps}, {count} batches stored, not 0..{count - 1}")
        if status == "completed":
            expected = json.loads(info)["steps_per_epoch"] * json.loads(config)["epochs"]
            if count != expected or evals.get(run_id) != expected:
                problems.append(f"run {run_id}: trained {expected} steps, {count} rows, last eval {evals.get(run_id)}")
        elif status not in ("cancelled",):
            problems.append(f"run {run_id} ended {status}: {error}")
    con.close()
    return problems, by_status


def _pct(values: list[float] | np.ndarray) -> str:
    if not len(values):
        return "-"
    p50, p95 = np.percentile(values, [50, 95]) * 1000
    return f"{p50:.0f} / {p95:.0f} / {np.max(values) * 1000:.0f}"


async def load(base: str, args: argparse.Namespace, tally: Tally) -> int:
    epochs = (args.min_epochs, args.max_epochs)
    queuing = asyncio.create_task(keep_queue_full(base, tally, args.seconds, args.workers, epochs))
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        while not tally.running:  # the first runs are claimed before the tabs open
            page = (await client.get("/api/runs", params={"status": "running"})).json()
            tally.running = [r["id"] for r in page["items"]]
            await asyncio.sleep(0.5)
    await browse(base, tally, args.tabs, args.seconds)
    return await queuing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tabs", type=int, default=20, help="httpx clients doing what a dashboard tab does")
    parser.add_argument("--chromium", type=int, default=1, choices=(0, 1), help="real Chromium tabs alongside")
    parser.add_argument("--min-epochs", type=int, default=40)
    parser.add_argument("--max-epochs", type=int, default=80)
    parser.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        help="nice level of the clients and Chromium (the server stays at 0, its workers at 10): as if the "
        "browsers were on other machines, which the 2 cores here cannot show otherwise",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.tabs, args.min_epochs, args.max_epochs = 15.0, 5, 8, 12
    tmp = Path(tempfile.mkdtemp(prefix="cw-concurrency-"))
    db, log = tmp / "cw.db", tmp / "server.log"
    tally, facts = Tally(), {"load_before": load_average(), "chromium": {}}
    with serve(db, log, workers=args.workers) as server:
        if args.clients_nice:
            os.nice(args.clients_nice)  # this thread, and what it starts from now on; not the server
        started, cpu_before = time.monotonic(), cpu_seconds(server.pid)
        out = facts["chromium"]
        tab = threading.Thread(target=watch_in_chromium, args=(server.base, tally, args.seconds, out), daemon=True)
        if args.chromium:
            tab.start()
        facts["queued"] = asyncio.run(load(server.base, args, tally))
        cpu_after = cpu_seconds(server.pid)
        facts["load_during"], facts["load_seconds"] = load_average(), time.monotonic() - started
        facts["cpu"] = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
        tab.join(timeout=120) if args.chromium else None
        facts["cancelled"] = asyncio.run(drain(server.base, wait_seconds=180))
        facts["elapsed"] = time.monotonic() - started
    facts["server_log"] = log.read_text(errors="replace")
    facts["problems"], facts["by_status"] = check_rows(db)
    report(args, tally, facts, record=not args.quick)


def report(args: argparse.Namespace, tally: Tally, facts: dict[str, Any], record: bool) -> None:
    server_log, problems, browser_out = facts["server_log"], facts["problems"], facts["chromium"]
    locked = server_log.count("database is locked") + sum("database is locked" in e for e in tally.server_errors)
    seconds, (server_cpu, workers_cpu) = facts["load_seconds"], facts["cpu"]
    lines = [
        "### 4 workers and 20 browsers on one SQLite file (bench/concurrency.py)",
        "",
        f"{machine_line()}; {facts['load_before']} before, {facts['load_during']} at the end of the load. "
        f"`collapsewatch serve --workers {args.workers}` on a SQLite file; runs of the fixed preset, "
        f"{args.min_epochs}-{args.max_epochs} epochs (25 steps each), {args.workers} always queued for "
        f"{args.seconds:.0f} s ({facts['queued']} queued; afterwards {len(facts['cancelled'])} still queued were "
        f"cancelled and the running ones finished); {args.tabs} httpx clients as dashboard tabs (GET /api/runs "
        "every 2 s; per run page GET stats?max_points=2000, evals, warnings, then its SSE stream; re-attach when "
        f"the run ends); {args.chromium} real Chromium tab on run pages alongside"
        + (
            f"; the clients and Chromium at nice {args.clients_nice} (the server at 0, its workers at 10)."
            if args.clients_nice
            else "; clients, Chromium and the server at the same priority (the workers at nice 10)."
        ),
        "",
        "| endpoint class | requests | seen by the client: p50 / p95 / max (ms) "
        "| in the server (Server-Timing): p50 / p95 / max (ms) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {kind} | {len(v)} | {_pct(v)} | {_pct(tally.server_time.get(kind, []))} |"
        for kind, v in sorted(tally.latency.items())
    ]
    worst = max(float(np.percentile(v, 95)) for v in tally.latency.values())
    worst_server = max((float(np.percentile(v, 95)) for v in tally.server_time.values() if v), default=float("nan"))
    rows = "all equal" if not problems else "; ".join(problems[:10])
    lines += [
        "",
        f"- API p95 target < 200 ms, as the clients saw it: {'met' if worst < 0.2 else 'MISSED'} (worst class p95 "
        f"{worst * 1000:.0f} ms); inside the server: worst class p95 {worst_server * 1000:.0f} ms. The rest is time "
        "outside the app (uvicorn, the loopback, the clients' own event loop), on the same 2 cores as the "
        "clients, Chromium, the server and its workers.",
        f"- SSE: {tally.sse_events} stats events over {tally.attaches} attaches; gap between events of a running "
        f"run p50 / p95 / max {_pct(tally.sse_gaps)} ms; events not starting right after the previous one: "
        f"{tally.sse_step_holes}.",
        f'- "database is locked": {locked} (server log and responses); 5xx responses: {len(tally.server_errors)}; '
        f"tracebacks in the server log: {server_log.count('Traceback')}; client errors: "
        f"{len(tally.client_errors)}; status codes {dict(sorted(tally.status_codes.items()))}.",
        f"- Rows: runs by status {facts['by_status']}; each run's stored batches vs its steps field (and, "
        f"completed, vs the steps trained and the last eval step): {rows}.",
        f"- CPU during the {seconds:.0f} s of load: server process {server_cpu:.0f} s, its {args.workers} workers "
        f"{workers_cpu:.0f} s (2 cores: {2 * seconds:.0f} s in all).",
    ]
    if browser_out:
        lines.append(
            f"- Chromium tab: {browser_out['pages']} run pages, SSE event → drawn p50 / p95 / max "
            f"{_pct(browser_out['lags'])} ms, page errors: {browser_out['errors'] or 'none'}."
        )
    lines.append(
        f'- Whole benchmark {facts["elapsed"]:.0f} s. Peers: "database is locked" when a dashboard and a trainer '
        "share one SQLite file (optuna-dashboard#545, trackio#133; ANCHORS, measured earlier on these machines)."
    )
    lines += [f"  - {e}" for e in (tally.server_errors + tally.client_errors)[:5]]
    print("\n".join(lines))
    if record:  # a --quick smoke run is not a result
        append_results(lines)


if __name__ == "__main__":
    main()
