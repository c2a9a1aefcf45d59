"""What a dashboard tab does, as an httpx client: poll the runs list, and follow a running run's page
(first load, then its SSE stream), re-attaching to another running run when it finishes."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

FINISHED = {"completed", "failed", "cancelled", "diverged"}
FIRST_STEP = re.compile(r'"steps":\[(-?\d+)')
LAST_STEP = re.compile(r'"last_step":(-?\d+)')
STATUS = re.compile(r'"status":"(\w+)"')
SERVER_TIMING = re.compile(r"app;dur=([\d.]+)")
STATS = "GET /stats?max_points=2000 (attach)"


@dataclass
class Tally:
    """Everything the clients saw: latencies per endpoint class, SSE gaps, failures."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_time: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # Server-Timing
    status_codes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    server_errors: list[str] = field(default_factory=list)  # 5xx bodies, "database is locked" among them
    client_errors: list[str] = field(default_factory=list)  # timeouts, resets
    sse_gaps: list[float] = field(default_factory=list)  # seconds between stats events of a running run
    sse_step_holes: int = 0  # a stats event that does not start right after the previous one
    sse_events: int = 0
    attaches: int = 0
    running: list[int] = field(default_factory=list)  # running run ids, from the latest list poll
    watchers: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def note(self, kind: str, seconds: float, response: httpx.Response) -> None:
        self.latency[kind].append(seconds)
        timing = SERVER_TIMING.search(response.headers.get("server-timing", ""))
        if timing:
            self.server_time[kind].append(float(timing[1]) / 1000)
        self.status_codes[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{kind} {response.status_code}: {response.text[:300]}")


async def timed_get(
    client: httpx.AsyncClient, tally: Tally, kind: str, url: str, parse: bool = True, **params: Any
) -> Any:
    """The JSON body (parse), the response (not parse: the 20 clients share one process and 2 cores
    with the server, so megabyte answers are not decoded when a field or two will do), or None."""
    started = time.perf_counter()
    try:
        response = await client.get(url, params=params or None)
    except httpx.HTTPError as exc:
        tally.client_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        return None
    tally.note(kind, time.perf_counter() - started, response)
    if response.status_code != 200:
        return None
    return response.json() if parse else response


async def poll_list(client: httpx.AsyncClient, tally: Tally, deadline: float, period: float = 2.0) -> None:
    """The runs list page: GET /api/runs every `period` s."""
    await asyncio.sleep(random.uniform(0, period))  # tabs were not all opened in the same instant
    while time.monotonic() < deadline:
        page = await timed_get(client, tally, "GET /api/runs (list poll)", "/api/runs")
        if page is not None:
            tally.running = [r["id"] for r in page["items"] if r["status"] == "running"]
        await asyncio.sleep(period)


def _pick(tally: Tally) -> int | None:
    """The running run with the fewest watchers, so the tabs spread over the runs."""
    if not tally.running:
        return None
    return min(tally.running, key=lambda r: (tally.watchers[r], random.random()))


async def follow_runs(client: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    """A run page: first load (stats, evals, warnings), then its event stream until the run ends."""
    while time.monotonic() < deadline:
        run_id = _pick(tally)
        if run_id is None:
            await asyncio.sleep(0.5)
            continue
        tally.watchers[run_id] += 1
        tally.attaches += 1
        try:
            stats, _evals, _warnings = await asyncio.gather(
                timed_get(client, tally, STATS, f"/api/runs/{run_id}/stats", parse=False, max_points=2000),
                timed_get(client, tally, "GET /evals (attach)", f"/api/runs/{run_id}/evals", parse=False),
                timed_get(client, tally, "GET /warnings (attach)", f"/api/runs/{run_id}/warnings", parse=False),
            )
            status = STATUS.search(stats.text)[1] if stats is not None else None
            if status is not None and status not in FINISHED:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await _stream(client, tally, run_id, int(LAST_STEP.search(stats.text)[1]))
            # it has ended: until the next list poll knows, do not pick it again
            tally.running = [r for r in tally.running if r != run_id]
            await asyncio.sleep(0.2)
        except TimeoutError:
            return
        finally:
            tally.watchers[run_id] -= 1


async def _stream(client: httpx.AsyncClient, tally: Tally, run_id: int, since: int) -> None:
    started = time.perf_counter()
    last_step, last_at = since, None
    try:
        async with client.stream("GET", f"/api/runs/{run_id}/events", params={"since_step": since}) as response:
            tally.note("GET /events (SSE, headers)", time.perf_counter() - started, response)
            if response.status_code != 200:
                await response.aread()
                return
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "stats":
                    # a regex, not json.loads: the clients share 2 cores with the server they measure
                    first, last = int(FIRST_STEP.search(line)[1]), int(LAST_STEP.search(line)[1])
                    now = time.monotonic()
                    tally.sse_events += 1
                    tally.sse_step_holes += first != last_step + 1
                    last_step = last
                    if last_at is not None:
                        tally.sse_gaps.append(now - last_at)
                    last_at = now
                elif line.startswith("data: ") and event == "status" and json.loads(line[6:])["status"] in FINISHED:
                    return
    except httpx.HTTPError as exc:
        tally.client_errors.append(f"SSE run {run_id}: {type(exc).__name__}: {exc}")


async def browse(base: str, tally: Tally, tabs: int, seconds: float) -> None:
    """`tabs` clients, each with its own connections, each polling the list and following a run."""
    deadline = time.monotonic() + seconds
    timeout = httpx.Timeout(30.0, read=60.0)
    clients = [httpx.AsyncClient(base_url=base, timeout=timeout) for _ in range(tabs)]
    try:
        await asyncio.gather(
            *(poll_list(c, tally, deadline) for c in clients), *(follow_runs(c, tally, deadline) for c in clients)
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
