"""GET /api/runs/{id}/events: what is new about a run, as server-sent events, until it finishes.

Every stream of a run shares one database poll (app/run_feed.py), done in a worker thread every
~0.1 s, never on the event loop; a stream stops when its client leaves or after the final status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from app import crud
from app.api.deps import EngineDep
from app.run_feed import Batch, Cursor, FeedHub

router = APIRouter(prefix="/runs", tags=["stream"])

KEEPALIVE_SECONDS = 10.0
IDLE_CHECK_SECONDS = 1.0  # how often a stream with nothing new looks whether its client left


async def run_events(request: Request, hub: FeedHub, run_id: int, since_step: int) -> AsyncIterator[str]:
    own = Cursor(since_step=since_step)
    feed, queue = hub.subscribe(run_id, since_step)
    last_sent = time.monotonic()
    try:
        while True:
            try:
                batch = await asyncio.wait_for(queue.get(), IDLE_CHECK_SECONDS)
            except TimeoutError:
                # Starlette also cancels the stream when the client leaves; asking costs ~0.2 ms, so
                # only when idle, not for each of the ~10 batches a second
                if await request.is_disconnected():
                    return
                batch = Batch(start=own, end=own)  # nothing new
            if batch is None:  # the shared poll failed (logged there): the client reconnects
                return
            texts = await feed.events_for(own, batch)
            for text in texts:
                yield text
            if texts:
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"  # keeps proxies from closing an idle stream
                last_sent = time.monotonic()
            if batch.done:
                return
    finally:
        feed.subscribers.discard(queue)


@router.get("/{run_id}/events", response_class=StreamingResponse)
def stream_run_events(request: Request, engine: EngineDep, run_id: int, since_step: int = -1) -> StreamingResponse:
    # a session of its own, closed before the stream starts: a request-scoped one (SessionDep) would
    # hold a pooled connection, and a read snapshot that stops WAL checkpoints, for the whole stream
    with Session(engine) as session:
        crud.get_run(session=session, run_id=run_id)  # 404 before the stream starts
    return StreamingResponse(
        run_events(request, request.app.state.run_feeds, run_id, since_step),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
