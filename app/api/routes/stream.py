"""GET /api/runs/{id}/events: what is new about a run, as server-sent events, until it finishes.

The generator polls the database in a worker thread every ~0.25 s (never on the event loop) and
stops when the client leaves or after the final status of a finished run.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from app import crud
from app.api.deps import EngineDep
from app.models import FINISHED_STATUSES, Run, StatusEvent

router = APIRouter(prefix="/runs", tags=["stream"])

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 10.0
MAX_ROWS_PER_EVENT = 5000  # a client resuming far behind catches up over several events


@dataclass
class _Cursor:
    since_step: int
    eval_id: int = 0
    warning_id: int = 0
    status: tuple[str, int, str | None] | None = None


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def poll_run(engine: Engine, run_id: int, cursor: _Cursor) -> tuple[list[str], bool]:
    """Events for what changed since `cursor` (which it advances) and whether the stream is done."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            gone = StatusEvent(status="deleted", steps=0, error=f"Run {run_id} not found")
            return [sse("status", gone.model_dump())], True
        # the status is read first: the sink commits a final status only after every row, so a
        # finished status here means the reads below see everything
        status = (run.status, run.steps, run.error)
        events: list[str] = []
        stats = crud.get_stats(session=session, run=run, since_step=cursor.since_step, limit=MAX_ROWS_PER_EVENT)
        if stats.steps:
            events.append(sse("stats", stats.model_dump(mode="json")))
            cursor.since_step = stats.last_step
        for eval_id, record in crud.list_evals(session=session, run_id=run_id, after_id=cursor.eval_id):
            events.append(sse("eval", record.model_dump(mode="json")))
            cursor.eval_id = eval_id
        for warning in crud.list_warnings(session=session, run_id=run_id, after_id=cursor.warning_id):
            events.append(sse("warning", warning.model_dump(mode="json")))
            cursor.warning_id = warning.id
    caught_up = len(stats.steps) < MAX_ROWS_PER_EVENT
    if status != cursor.status:
        events.append(sse("status", StatusEvent(status=status[0], steps=status[1], error=status[2]).model_dump()))
        cursor.status = status
    return events, status[0] in FINISHED_STATUSES and caught_up


async def run_events(request: Request, engine: Engine, run_id: int, since_step: int) -> AsyncIterator[str]:
    cursor = _Cursor(since_step=since_step)
    last_sent = time.monotonic()
    while not await request.is_disconnected():
        events, done = await run_in_threadpool(poll_run, engine, run_id, cursor)
        for event in events:
            yield event
        if events:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"  # keeps proxies from closing an idle stream
            last_sent = time.monotonic()
        if done:
            return
        await anyio.sleep(POLL_SECONDS)


@router.get("/{run_id}/events", response_class=StreamingResponse)
def stream_run_events(request: Request, engine: EngineDep, run_id: int, since_step: int = -1) -> StreamingResponse:
    # a session of its own, closed before the stream starts: a request-scoped one (SessionDep) would
    # hold a pooled connection, and a read snapshot that stops WAL checkpoints, for the whole stream
    with Session(engine) as session:
        crud.get_run(session=session, run_id=run_id)  # 404 before the stream starts
    return StreamingResponse(
        run_events(request, engine, run_id, since_step),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
