"""One database poll per followed run, shared by every event stream following it.

A `RunFeed` polls its run every POLL_SECONDS while anyone follows it and hands each `Batch` to its
subscribers. A subscriber behind the feed's cursor (it joined later, or resumed from an older step)
first reads the missing range itself, bounded by that cursor, so streams join without gaps or repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Engine, func, select
from sqlmodel import Session, SQLModel
from starlette.concurrency import run_in_threadpool

from app import crud
from app.models import FINISHED_STATUSES, EvalStat, Run, RunWarning, StatusEvent

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
MAX_ROWS_PER_EVENT = 5000  # a client resuming far behind catches up over several events
MAX_LOGGED = 2000  # evaluation (or warning) events a feed keeps for streams that join later

Status = tuple[str, int, str | None]  # status, steps, error


@dataclass
class Cursor:
    """How far a feed or a stream has got: the last step, eval id and warning id sent, the status."""

    since_step: int
    eval_id: int = 0
    warning_id: int = 0
    status: Status | None = None


@dataclass
class Batch:
    """What one poll found between the feed's cursor before (`start`) and after (`end`) it."""

    start: Cursor
    end: Cursor
    stats: str | None = None
    evals: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    warnings: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    done: bool = False  # the run is finished and everything it stored is in this batch or before


@dataclass
class _RunRef:
    """The columns of a run that reading its statistics needs (see app.stats.RunRef)."""

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


def _read_state(session: Session, run_id: int) -> _RunState | None:
    """One small query: the run's status and how far its statistics, evaluations and warnings go."""
    eval_id = select(func.max(EvalStat.id)).where(EvalStat.run_id == run_id).scalar_subquery()
    warning_id = select(func.max(RunWarning.id)).where(RunWarning.run_id == run_id).scalar_subquery()
    query = select(Run.status, Run.steps, Run.error, Run.last_step, eval_id, warning_id).where(Run.id == run_id)
    row = session.connection().execute(query).first()
    return None if row is None else _RunState(*row)


def _read(
    session: Session, run_id: int, cursor: Cursor, status: str, until_step: int | None, until: Cursor
) -> tuple[Batch, bool]:
    """Events after `cursor`: statistics up to `until_step` (None: all there is; no read when it is
    not ahead of the cursor), evaluations and warnings up to `until`'s ids. Returns the batch and
    whether the statistics stopped at MAX_ROWS_PER_EVENT (more remain)."""
    batch, full = Batch(start=cursor, end=dataclasses.replace(cursor)), False
    if until_step is None or until_step > cursor.since_step:
        stats = crud.get_stats(
            session=session,
            run=_RunRef(run_id, status, 0),
            since_step=cursor.since_step,
            until_step=until_step,
            limit=MAX_ROWS_PER_EVENT,
        )
        if stats.steps:
            batch.stats, batch.end.since_step = sse("stats", stats), stats.last_step
        full = len(stats.steps) >= MAX_ROWS_PER_EVENT
    if until.eval_id > cursor.eval_id:
        rows = crud.list_evals(session=session, run_id=run_id, after_id=cursor.eval_id)
        batch.evals = [(i, sse("eval", r)) for i, r in rows if i <= until.eval_id]
        batch.end.eval_id = until.eval_id
    if until.warning_id > cursor.warning_id:
        found = crud.list_warnings(session=session, run_id=run_id, after_id=cursor.warning_id)
        batch.warnings = [(w.id, sse("warning", w)) for w in found if w.id <= until.warning_id]
        batch.end.warning_id = until.warning_id
    return batch, full


def poll(engine: Engine, run_id: int, cursor: Cursor) -> Batch:
    """What is new about the run since `cursor` (left as it is)."""
    with Session(engine) as session:
        state = _read_state(session, run_id)
        if state is None:
            end = dataclasses.replace(cursor, status=("deleted", 0, f"Run {run_id} not found"))
            return Batch(start=cursor, end=end, done=True)
        # the status is read first: the sink commits a final status only after every row, so a
        # finished status here means the reads below see everything
        has_rows = state.last_step > cursor.since_step or state.last_step < 0 < state.steps
        until = Cursor(cursor.since_step, state.eval_id or 0, state.warning_id or 0)
        batch, full = _read(session, run_id, cursor, state.status, None if has_rows else cursor.since_step, until)
    batch.end.status = (state.status, state.steps, state.error)
    batch.done = state.status in FINISHED_STATUSES and not full
    return batch


def catch_up(engine: Engine, run_id: int, own: Cursor, until: Cursor) -> list[str]:
    """A stream's own read of what lies between its cursor `own` and `until` (it advances `own`)."""
    texts: list[str] = []
    status = (until.status or own.status or ("running", 0, None))[0]
    with Session(engine) as session:
        while True:
            batch, full = _read(session, run_id, own, status, until.since_step, until)
            texts += [t for t in (batch.stats,) if t] + [t for _, t in batch.evals] + [t for _, t in batch.warnings]
            own.since_step, own.eval_id, own.warning_id = batch.end.since_step, batch.end.eval_id, batch.end.warning_id
            if not full:
                break
    own.since_step = max(own.since_step, until.since_step)
    return texts


# --- the shared feeds (event-loop side) -----------------------------------------------------------------
class RunFeed:
    """Polls one run while it has subscribers (each an asyncio.Queue of batches; None: the feed failed).

    It keeps the run's evaluation and warning events it has sent (up to MAX_LOGGED of each), so a
    stream that joins later replays them from memory instead of reading and encoding them again."""

    def __init__(self, hub: FeedHub, key: tuple[int, int], since_step: int) -> None:
        self.hub, self.key, self.run_id = hub, key, key[1]
        self.cursor = Cursor(since_step)  # evaluations and warnings from the first: the logs hold all
        self.polled = False
        self.subscribers: set[asyncio.Queue[Batch | None]] = set()
        self.logged: dict[str, list[tuple[int, str]] | None] = {"evals": [], "warnings": []}
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> asyncio.Queue[Batch | None]:
        queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        if self.polled:  # an empty batch at the feed's cursor: the newcomer catches up to it, gets the status
            queue.put_nowait(Batch(start=self.cursor, end=self.cursor))
        self.subscribers.add(queue)
        if self._task is None:
            self._task = asyncio.create_task(self._poll_while_followed())
        return queue

    async def _poll_while_followed(self) -> None:
        try:
            while self.subscribers:
                batch = await run_in_threadpool(poll, self.hub.engine, self.run_id, self.cursor)
                changed = batch.stats or batch.evals or batch.warnings or batch.end.status != self.cursor.status
                self.cursor, self.polled = batch.end, True
                self._log(batch)
                for queue in self.subscribers if changed or batch.done else ():
                    queue.put_nowait(batch)
                if batch.done:
                    return
                await asyncio.sleep(POLL_SECONDS)
        except Exception:
            log.exception("run %s: polling for its event streams failed", self.run_id)
            for queue in self.subscribers:
                queue.put_nowait(None)
        finally:  # no await since the last check: nobody joined a feed that is going away
            if self.hub.feeds.get(self.key) is self:
                del self.hub.feeds[self.key]

    def _log(self, batch: Batch) -> None:
        for kind, events in (("evals", batch.evals), ("warnings", batch.warnings)):
            kept = self.logged[kind]
            if kept is not None and events:
                kept += events
                self.logged[kind] = kept if len(kept) <= MAX_LOGGED else None  # too many: joiners read them

    def _replay(self, kind: str, after: int, until: int) -> list[str] | None:
        kept = self.logged[kind]
        return None if kept is None else [t for i, t in kept if after < i <= until]

    async def events_for(self, own: Cursor, batch: Batch) -> list[str]:
        """The events a stream at `own` sends for one of this feed's batches (it advances `own`)."""
        texts: list[str] = []
        start, end = batch.start, batch.end
        if own.since_step < start.since_step or own.eval_id < start.eval_id or own.warning_id < start.warning_id:
            # behind the feed: the statistics from the database, the rest from the logs if they have it
            evals = self._replay("evals", own.eval_id, start.eval_id)
            warnings = self._replay("warnings", own.warning_id, start.warning_id)
            if own.since_step < start.since_step or evals is None or warnings is None:
                until = dataclasses.replace(
                    start,
                    eval_id=own.eval_id if evals is not None else start.eval_id,
                    warning_id=own.warning_id if warnings is not None else start.warning_id,
                )
                texts += await run_in_threadpool(catch_up, self.hub.engine, self.run_id, own, until)
            texts += (evals or []) + (warnings or [])
            own.eval_id, own.warning_id = max(own.eval_id, start.eval_id), max(own.warning_id, start.warning_id)
        if batch.stats is not None and own.since_step == start.since_step:
            texts.append(batch.stats)
        elif end.since_step > own.since_step:  # ahead of the feed's start: read up to its end instead
            until = dataclasses.replace(end, eval_id=0, warning_id=0)
            texts += await run_in_threadpool(catch_up, self.hub.engine, self.run_id, own, until)
        own.since_step = max(own.since_step, end.since_step)
        texts += [t for i, t in batch.evals if i > own.eval_id] + [t for i, t in batch.warnings if i > own.warning_id]
        own.eval_id, own.warning_id = max(own.eval_id, end.eval_id), max(own.warning_id, end.warning_id)
        if end.status is not None and end.status != own.status:
            texts.append(status_event(end.status))
            own.status = end.status
        return texts


class FeedHub:
    """The feeds of one app, by event loop and run id (a feed's queues belong to one loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.feeds: dict[tuple[int, int], RunFeed] = {}

    def subscribe(self, run_id: int, since_step: int) -> tuple[RunFeed, asyncio.Queue[Batch | None]]:
        key = (id(asyncio.get_running_loop()), run_id)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = RunFeed(self, key, since_step)
        return feed, feed.subscribe()
