"""GET /api/runs/{id}/events: what is new about a run, as server-sent events, until it finishes.

Every stream of a run shares one database poll (app/storage/feed.py), done in a worker thread every
~0.1 s, never on the event loop; a stream stops when its client leaves or after the final status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session

from app.api.deps import EngineDep
from app.errors import InputError, responses
from app.storage import crud
from app.storage.feed import ID_FORMAT, MAX_QUEUED, MAX_QUEUED_ROWS, MAX_ROWS_PER_EVENT, Batch, Cursor, FeedHub
from app.storage.models import FINISHED_STATUSES, MAX_STEP

router = APIRouter(prefix="/runs", tags=["stream"])

KEEPALIVE_SECONDS = 10.0
IDLE_CHECK_SECONDS = 1.0  # how often a stream with nothing new looks whether its client left

EVENTS_DESCRIPTION = f"""Server-sent events of one run until it finishes: `stats` (new batch rows, at most
{MAX_ROWS_PER_EVENT:,} per event; a client far behind gets its backlog as several such events, read one after
another), `eval`, `warning` and `status` (on a change of status or of the number of steps; the last one is final).

**Ids.** Every event carries an `id:`, the position of the stream just after it in each of its parts:
`{ID_FORMAT}`, e.g. `149.3.2.running.150` = statistics up to step 149, evaluations up to id 3, warnings up to
id 2, and the last status sent was `running` with 150 steps (the status part is absent until a status was
sent). Resuming from an id sends exactly the events after it, none twice and none left out:

- an `EventSource` reconnecting sends the last id it received as the `Last-Event-ID` header by itself;
- `last_event_id` passes one as a query parameter (a client that opens a new stream itself);
- `since_step` alone resumes the statistics after that step, with every evaluation and warning and the status
  from the first.

The header wins over `last_event_id`, which wins over `since_step`. A malformed id is a 422 naming it. The
final status is always the last event; resuming after it is a 204 (an `EventSource` then stops reconnecting).

A client that reads slower than the run writes is never buffered without bound: past {MAX_QUEUED} waiting
updates (or {MAX_QUEUED_ROWS:,} rows in them) they are dropped, and the stream reads what its client lacks from
the database, after its last event, a page at a time."""


async def run_events(request: Request, hub: FeedHub, run_id: int, resume: Cursor | int) -> AsyncIterator[str]:
    """The stream's text after `resume` (a cursor, or a step: everything else from the first)."""
    own = resume if isinstance(resume, Cursor) else Cursor(since_step=resume)
    feed, queue = hub.subscribe(run_id, own.since_step)
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
            async with aclosing(feed.events_for(own, batch)) as texts:
                async for text in texts:
                    yield text
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"  # keeps proxies from closing an idle stream
                last_sent = time.monotonic()
            if batch.done:
                return
    finally:
        feed.subscribers.discard(queue)


def _resume_from(since_step: int, query_id: str | None, header_id: str | None) -> Cursor:
    for loc, text in ((["header", "Last-Event-ID"], header_id), (["query", "last_event_id"], query_id)):
        if text:  # an EventSource that has received no id yet sends none (or an empty one)
            try:
                return Cursor.parse(text)
            except ValueError as exc:
                raise InputError.at(loc, str(exc)) from exc
    return Cursor(since_step=since_step)


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    description=EVENTS_DESCRIPTION,
    responses={204: {"description": "resumed after the final status: nothing follows"}, **responses(400, 401, 404)},
)
def stream_run_events(
    request: Request,
    engine: EngineDep,
    run_id: int,  # a plain int: crud.get_run answers 404 for one no table can hold
    since_step: Annotated[
        int, Query(ge=-1, le=MAX_STEP, description="statistics after this step; the rest from the first")
    ] = -1,
    last_event_id: Annotated[str | None, Query(description=f"resume after this event id: {ID_FORMAT}")] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", description="sent by a reconnecting EventSource")
    ] = None,
) -> Response:
    resume = _resume_from(since_step, last_event_id, last_event_id_header)  # a 422 before the 404: no query
    if resume.status is not None and resume.status[0] in FINISHED_STATUSES:
        # after the final status nothing follows; 204 is what tells an EventSource to stop reconnecting
        return Response(status_code=204)
    # a session of its own, closed before the stream starts: a request-scoped one (SessionDep) would
    # hold a pooled connection, and a read snapshot that stops WAL checkpoints, for the whole stream
    with Session(engine) as session:
        crud.get_run(session=session, run_id=run_id)  # 404 before the stream starts
    return StreamingResponse(
        run_events(request, request.app.state.run_feeds, run_id, resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
