"""One database poll per followed run, shared by every event stream following it.

A `RunFeed` polls its run every POLL_SECONDS while anyone follows it and puts each `Batch` on every
subscriber's bounded queue. A stream behind the feed (it joined later, resumed from an older event id,
or let its queue overflow, which drops the queue) reads the missing range itself, a page at a time,
bounded by the feed's position: streams join, resume and resync without gaps or repeats, and none holds
more than a page. A `Cursor` is also the SSE id of each event (`Cursor.event_id`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from sqlalchemy import Engine, func, select
from sqlmodel import Session, SQLModel, col
from starlette.concurrency import run_in_threadpool

from app.storage import crud
from app.storage.models import (
    FINISHED_STATUSES,
    MAX_ID,
    MAX_STEP,
    RUN_STATUSES,
    EvalStat,
    Run,
    RunWarning,
    StatusEvent,
    WarningPublic,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
MAX_ROWS_PER_EVENT = 2000  # statistics rows per event and per read: a stream far behind catches up page by page
MAX_RECORDS_PER_READ = 500  # evaluations (or warnings) per read
MAX_LOGGED = 2000  # evaluation (or warning) events a feed keeps for streams that join later
# what may wait for one stream: batches (~2 s of polls) and the statistics rows in them (one page, ~1.3 MB
# of JSON); past either, its queue is dropped and it resyncs from the database
MAX_QUEUED = 16
MAX_QUEUED_ROWS = MAX_ROWS_PER_EVENT

Status = tuple[str, int, str | None]  # status, steps, error
ID_FORMAT = "STEP.EVAL_ID.WARNING_ID[.STATUS.STEPS]"
_STATUSES = (*RUN_STATUSES, "deleted")
_Record = TypeVar("_Record", EvalStat, RunWarning)


@dataclass
class Cursor:
    """How far a feed or a stream has got: the last step, eval id and warning id sent, the status."""

    since_step: int
    eval_id: int = 0
    warning_id: int = 0
    status: Status | None = None

    def event_id(self) -> str:
        """As an SSE id, e.g. `149.3.2.running.150`; the status part only once a status was sent."""
        head = f"{self.since_step}.{self.eval_id}.{self.warning_id}"
        return head if self.status is None else f"{head}.{self.status[0]}.{self.status[1]}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor an event id names (ValueError saying what an id looks like)."""
        parts = text.strip().split(".")
        try:
            step, eval_id, warning_id = (int(p) for p in parts[:3])
            status = None if len(parts) == 3 else (parts[3], int(parts[4]), None)
            if len(parts) not in (3, 5) or min(step + 1, eval_id, warning_id, status[1] if status else 0) < 0:
                raise ValueError
            # no larger number reaches a query: the columns cannot hold it (a 422, never a 500 mid-stream)
            if max(step, status[1] if status else 0) > MAX_STEP or max(eval_id, warning_id) > MAX_ID:
                raise ValueError
            if status is not None and status[0] not in _STATUSES:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(
                f"expected an event's id, {ID_FORMAT}, e.g. 149.3.2.running.150 (STEP -1 to {MAX_STEP}, ids 0 "
                f"to {MAX_ID}, STATUS one of {', '.join(_STATUSES)}); got {text[:80]!r}"
            ) from None
        return cls(step, eval_id, warning_id, status)

    def behind(self, other: Cursor) -> bool:
        return self.since_step < other.since_step or self.eval_id < other.eval_id or self.warning_id < other.warning_id

    def reach(self, other: Cursor) -> None:
        """Move up to `other` in each stream but the status (what lies between was sent or does not exist)."""
        self.since_step = max(self.since_step, other.since_step)
        self.eval_id, self.warning_id = max(self.eval_id, other.eval_id), max(self.warning_id, other.warning_id)

    def send(self, event: Event) -> str:
        """Move past `event`; returns its id line (the event's text follows as a chunk of its own, so a
        large statistics event shared by many streams is never copied)."""
        setattr(self, event.field, event.position)
        return f"id: {self.event_id()}\n"


class Event(NamedTuple):
    """An encoded event and where it leaves its own stream: `field` of a Cursor set to `position`."""

    field: str  # "since_step" (statistics: its last step), "eval_id" or "warning_id"
    position: int
    text: str
    rows: int = 0  # statistics rows it holds


@dataclass
class Batch:
    """What one poll found between the feed's cursor before (`start`) and after (`end`) it."""

    start: Cursor
    end: Cursor
    events: list[Event] = dataclasses.field(default_factory=list)  # one statistics event at most
    done: bool = False  # the run is finished and everything it stored is in this batch or before

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.events)


class StreamQueue(asyncio.Queue["Batch | None"]):
    """The batches waiting for one stream (None: the feed failed), and how many statistics rows they hold."""

    def __init__(self) -> None:
        super().__init__(MAX_QUEUED)
        self.rows = 0

    # asyncio.Queue's own hooks for what a put adds and a get takes (as in PriorityQueue)
    def _put(self, item: Batch | None) -> None:
        super()._put(item)
        self.rows += item.rows if item else 0

    def _get(self) -> Batch | None:
        item = super()._get()
        self.rows -= item.rows if item else 0
        return item


class Page(NamedTuple):
    events: list[Event]
    end: Cursor  # how far the read got (past its last event where nothing lies between)
    more: bool  # a read stopped at its limit: more lies before the bound it was given


@dataclass
class _RunRef:
    """The columns of a run that reading its statistics needs (see app.storage.reads.RunRef)."""

    id: int
    status: str
    steps: int


class _RunState(NamedTuple):
    status: str
    steps: int
    error: str | None
    last_step: int
    eval_id: int | None
    warning_id: int | None


def sse(event: str, data: SQLModel) -> str:
    # pydantic-core writes the JSON itself: ~10x faster than model_dump + json.dumps on a stats event
    return f"event: {event}\ndata: {data.model_dump_json()}\n\n"


def status_event(status: Status) -> str:
    return sse("status", StatusEvent(status=status[0], steps=status[1], error=status[2]))


# --- reads (worker thread) ------------------------------------------------------------------------------
def _read_state(session: Session, run_id: int) -> _RunState | None:
    """One small query: the run's status and how far its statistics, evaluations and warnings go."""
    eval_id = select(func.max(EvalStat.id)).where(EvalStat.run_id == run_id).scalar_subquery()
    warning_id = select(func.max(RunWarning.id)).where(RunWarning.run_id == run_id).scalar_subquery()
    query = select(Run.status, Run.steps, Run.error, Run.last_step, eval_id, warning_id).where(Run.id == run_id)
    row = session.connection().execute(query).first()
    return None if row is None else _RunState(*row)


def _records(session: Session, table: type[_Record], run_id: int, after: int, until: int) -> list[_Record]:
    """The run's evaluations (or warnings) with after < id <= until, oldest first, a page at most."""
    query = select(table).where(table.run_id == run_id, col(table.id) > after, col(table.id) <= until)
    return list(session.scalars(query.order_by(col(table.id)).limit(MAX_RECORDS_PER_READ)))


def read_page(
    session: Session, run_id: int, status: str, after: Cursor, until: Cursor, all_steps: bool = False
) -> Page:
    """Events after `after`: up to MAX_ROWS_PER_EVENT statistics rows to `until`'s step (`all_steps`:
    whatever there is), up to MAX_RECORDS_PER_READ evaluations and warnings to `until`'s ids."""
    events: list[Event] = []
    end, more = dataclasses.replace(after), False
    if all_steps or until.since_step > after.since_step:
        stats = crud.get_stats(
            session=session,
            run=_RunRef(run_id, status, 0),
            since_step=after.since_step,
            until_step=None if all_steps else until.since_step,
            limit=MAX_ROWS_PER_EVENT,
        )
        full = len(stats.steps) >= MAX_ROWS_PER_EVENT
        if stats.steps:
            events.append(Event("since_step", stats.last_step, sse("stats", stats), len(stats.steps)))
        end.since_step, more = stats.last_step if full or all_steps else until.since_step, full
    if until.eval_id > after.eval_id:
        evals = _records(session, EvalStat, run_id, after.eval_id, until.eval_id)
        events += [Event("eval_id", r.id or 0, sse("eval", crud.eval_public(r))) for r in evals]
        full = len(evals) >= MAX_RECORDS_PER_READ
        end.eval_id, more = events[-1].position if full else until.eval_id, more or full
    if until.warning_id > after.warning_id:
        warnings = _records(session, RunWarning, run_id, after.warning_id, until.warning_id)
        events += [Event("warning_id", r.id or 0, sse("warning", WarningPublic.model_validate(r))) for r in warnings]
        full = len(warnings) >= MAX_RECORDS_PER_READ
        end.warning_id, more = events[-1].position if full else until.warning_id, more or full
    return Page(events, end, more)


def poll(engine: Engine, run_id: int, cursor: Cursor) -> Batch:
    """What is new about the run since `cursor` (left as it is), a page at most."""
    with Session(engine) as session:
        state = _read_state(session, run_id)
        if state is None:
            end = dataclasses.replace(cursor, status=("deleted", 0, f"Run {run_id} not found"))
            return Batch(start=cursor, end=end, done=True)
        # the status is read first: the sink commits a final status only after every row, so a
        # finished status here means the reads below see everything
        has_rows = state.last_step > cursor.since_step or state.last_step < 0 < state.steps
        until = Cursor(cursor.since_step, state.eval_id or 0, state.warning_id or 0)
        page = read_page(session, run_id, state.status, cursor, until, all_steps=has_rows)
    page.end.status = (state.status, state.steps, state.error)
    return Batch(
        start=cursor, end=page.end, events=page.events, done=state.status in FINISHED_STATUSES and not page.more
    )


def read_page_in(engine: Engine, run_id: int, status: str, after: Cursor, until: Cursor) -> Page:
    with Session(engine) as session:
        return read_page(session, run_id, status, after, until)


# --- the shared feeds (event-loop side) -----------------------------------------------------------------
class RunFeed:
    """Polls one run while it has subscribers (each a bounded StreamQueue).

    It keeps the run's evaluation and warning events it has sent (up to MAX_LOGGED of each), so a
    stream that joins later replays them from memory instead of reading and encoding them again."""

    def __init__(self, hub: FeedHub, key: tuple[int, int], since_step: int) -> None:
        self.hub, self.key, self.run_id = hub, key, key[1]
        self.cursor = Cursor(since_step)  # evaluations and warnings from the first: the logs hold all
        self.polled = False
        self.subscribers: set[StreamQueue] = set()
        self.logged: dict[str, list[Event] | None] = {"eval_id": [], "warning_id": []}
        self.resyncs = 0  # how often a stream's queue overflowed and was dropped
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> StreamQueue:
        queue = StreamQueue()
        if self.polled:  # an empty batch at the feed's cursor: the newcomer catches up to it, gets the status
            queue.put_nowait(Batch(start=self.cursor, end=self.cursor))
        self.subscribers.add(queue)
        if self._task is None:
            self._task = asyncio.create_task(self._poll_while_followed())
        return queue

    def _deliver(self, queue: StreamQueue, item: Batch | None) -> None:
        if queue.full() or (queue.rows and queue.rows + (item.rows if item else 0) > MAX_QUEUED_ROWS):
            # its client reads slower than the run writes: the queued batches go, and since `item` starts
            # past that stream's cursor, it reads the gap from the database itself, a page at a time
            while not queue.empty():
                queue.get_nowait()
            self.resyncs += 1
        queue.put_nowait(item)

    async def _poll_while_followed(self) -> None:
        try:
            while self.subscribers:
                batch = await run_in_threadpool(poll, self.hub.engine, self.run_id, self.cursor)
                changed = batch.events or batch.end.status != self.cursor.status
                self.cursor, self.polled = batch.end, True
                self._log(batch)
                for queue in self.subscribers if changed or batch.done else ():
                    self._deliver(queue, batch)
                if batch.done:
                    return
                await asyncio.sleep(POLL_SECONDS)
        except Exception:
            log.exception("run %s: polling for its event streams failed", self.run_id)
            for queue in self.subscribers:
                self._deliver(queue, None)
        finally:  # no await since the last check: nobody joined a feed that is going away
            if self.hub.feeds.get(self.key) is self:
                del self.hub.feeds[self.key]

    def _log(self, batch: Batch) -> None:
        for field, kept in self.logged.items():
            if kept is not None:
                kept += [e for e in batch.events if e.field == field]
                self.logged[field] = kept if len(kept) <= MAX_LOGGED else None  # too many: joiners read them

    async def _catch_up(self, own: Cursor, until: Cursor) -> AsyncIterator[str]:
        """What lies between `own` and `until`, which `own` ends at: evaluations and warnings from the
        logs where they hold them, the rest read from the database a page at a time."""
        for field, kept in self.logged.items():
            after, last = getattr(own, field), getattr(until, field)
            if kept is not None and after < last:
                for event in [e for e in kept if after < e.position <= last]:
                    yield own.send(event)
                    yield event.text
                setattr(own, field, last)
        status = (until.status or own.status or ("running", 0, None))[0]
        while own.behind(until):
            page = await run_in_threadpool(read_page_in, self.hub.engine, self.run_id, status, own, until)
            for event in page.events:
                yield own.send(event)
                yield event.text
            own.reach(page.end)

    async def events_for(self, own: Cursor, batch: Batch) -> AsyncIterator[str]:
        """What a stream at `own` sends for one of this feed's batches: each event's id line, then the
        event (it advances `own` as each is taken)."""
        start, end = batch.start, batch.end
        if own.behind(start):  # it joined later, resumed from an older id, or its queue overflowed
            async for text in self._catch_up(own, start):
                yield text
        for event in batch.events:
            if event.field != "since_step" and event.position <= getattr(own, event.field):
                continue  # it resumed past this one
            if event.field != "since_step" or own.since_step == start.since_step:
                yield own.send(event)
                yield event.text
            elif own.since_step < end.since_step:  # resumed ahead of the feed's start: read up to its end
                async for text in self._catch_up(own, dataclasses.replace(own, since_step=end.since_step)):
                    yield text
        own.reach(end)
        status = end.status
        # a final status is the stream's last event (clients stop there): none while more rows remain
        early = status is not None and status[0] in FINISHED_STATUSES and not batch.done
        if status is not None and not early and (own.status is None or status[:2] != own.status[:2]):
            # compared by status and steps: an id carries no error, and an error comes with a new status
            own.status = status
            yield f"id: {own.event_id()}\n"
            yield status_event(status)


class FeedHub:
    """The feeds of one app, by event loop and run id (a feed's queues belong to one loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.feeds: dict[tuple[int, int], RunFeed] = {}

    def subscribe(self, run_id: int, since_step: int) -> tuple[RunFeed, StreamQueue]:
        key = (id(asyncio.get_running_loop()), run_id)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = RunFeed(self, key, since_step)
        return feed, feed.subscribe()
