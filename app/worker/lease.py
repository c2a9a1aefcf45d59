"""A worker's lease on the run it claimed: the epoch (fencing token) that every one of its writes carries, the
heartbeat that keeps the run alive, and taking back a run that the reaper marked lost while its worker lived.

`Run.lease` goes up by one at every claim and whenever someone other than the owner ends the run (the reaper's
"worker lost"). A worker writes for its run only while the lease is still its epoch (an UPDATE ... WHERE
lease = :epoch first in every transaction, which also locks the row until the commit), so a worker that comes
back after its run was marked lost, queued again, claimed by another worker or deleted writes nothing into it.
The one exception is the owner that was alive all along: while the run is still marked lost and nothing else
happened to it (its lease is exactly the epoch + 1), the owner takes it back, with a new epoch (+ 2).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import Engine, and_, event, literal, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from app.storage.clock import db_now
from app.storage.models import Run
from app.storage.notify import CANCEL

if TYPE_CHECKING:
    from app.worker.wakeup import Wakeups

log = logging.getLogger(__name__)
T = TypeVar("T")
LOST_PREFIX = "worker lost ("  # how the reaper's verdict starts; a worker that comes back looks for it
CANCEL_POLL_SECONDS = 0.25  # how often a running run's worker reads whether it was asked to stop
KEEPALIVE_PROBES = 3  # unanswered keepalives (1 s apart) before PostgreSQL ends a worker's session


class Keepalive(NamedTuple):
    """How PostgreSQL finds a worker's machine gone: keepalives while the session is quiet (`idle` s before the
    first, `interval` s between, `probes` unanswered end it), and the same bound on a reply left unacknowledged
    (`tcp_user_timeout`: with data in flight, Linux retransmits for ~15 minutes and sends no keepalive)."""

    idle: int
    interval: int
    probes: int

    @property
    def user_timeout_ms(self) -> int:
        return 1000 * (self.idle + self.interval * self.probes)


def session_keepalive(stale_after_seconds: float) -> Keepalive:
    """A silent machine's session ends a third of the stale limit plus 3 s after its last word."""
    return Keepalive(max(1, int(stale_after_seconds / 3)), 1, KEEPALIVE_PROBES)


def bound_idle_transactions(engine: Engine, stale_after_seconds: float) -> None:
    """On PostgreSQL, end a worker's session that sits idle inside a transaction for a third of the stale limit
    (2 s at least), and one whose machine stops answering (`session_keepalive`): a worker cut off from the
    network mid-transaction would otherwise keep its run's row locked (`Lease.fence` locks it) until TCP gives
    up, up to hours later, and every reaper's UPDATE would wait as long. The second is what bounds it after an
    `executemany` (psycopg's pipeline), where PostgreSQL 15 leaves the idle timer off. A worker's transactions
    last milliseconds; one that is ended so is retried like any lost connection (app/worker/sink.py)."""
    if engine.dialect.name != "postgresql":
        return
    idle_ms = int(max(2.0, stale_after_seconds / 3) * 1000)
    alive = session_keepalive(stale_after_seconds)
    option = (
        f"-c idle_in_transaction_session_timeout={idle_ms} -c tcp_keepalives_idle={alive.idle} "
        f"-c tcp_keepalives_interval={alive.interval} -c tcp_keepalives_count={alive.probes} "
        f"-c tcp_user_timeout={alive.user_timeout_ms}"
    )

    @event.listens_for(engine, "do_connect")
    def _with_timeout(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        params["options"] = f"{params.get('options', '')} {option}".strip()


class LeaseLost(Exception):
    """The run is no longer this worker's: deleted, or marked and moved on (its lease is another epoch)."""


def reclaim_run(conn: Connection, run_id: int, *, worker: str, epoch: int | None = None) -> str | None:
    """Take back a run that the reaper marked lost while `worker`, still its owner, was alive; returns the note
    now in its error ("marked failed for a while: worker lost (...); ..."), None if not so marked. With `epoch`
    (the lease the worker holds) only if nothing else happened since the mark: the lease is then epoch + 2."""
    note = literal("marked failed for a while: ") + Run.error + literal(f"; worker {worker} was alive and went on")
    where = [Run.id == run_id, Run.worker == worker, Run.status == "failed", Run.error.startswith(LOST_PREFIX)]
    values: dict[str, Any] = {"status": "running", "finished_at": None, "heartbeat_at": db_now(conn), "error": note}
    if epoch is not None:
        where.append(Run.lease == epoch + 1)
        values["lease"] = epoch + 2
    row = conn.execute(update(Run).where(*where).values(**values).returning(Run.error)).first()
    if row is None:
        return None
    log.warning("run %s: had been marked lost while worker %s was alive; taken back", run_id, worker)
    return str(row[0])


class Lease:
    """The epoch `worker` holds on `run_id`, shared by its heartbeat, its statistics writer and its final write
    (threads of one process): when one of them takes the run back, all of them write with the new epoch."""

    def __init__(self, run_id: int, worker: str, epoch: int) -> None:
        self.run_id, self.worker, self.epoch = run_id, worker, epoch
        self.notes: list[str] = []  # one per time the run was taken back from the reaper
        self._lock = threading.Lock()

    @classmethod
    def of(cls, engine: Engine, run_id: int, worker: str) -> Lease | None:
        """The lease `worker` holds right after claiming `run_id`; None when the run is not running for it
        (deleted, or marked meanwhile: the claim's epoch is then no longer the run's)."""
        with engine.connect() as conn:
            epoch = conn.execute(
                select(Run.lease).where(Run.id == run_id, Run.worker == worker, Run.status == "running")
            ).scalar_one_or_none()
        return None if epoch is None else cls(run_id, worker, int(epoch))

    @classmethod
    def current(cls, engine: Engine, run_id: int, worker: str) -> Lease:
        """The run's lease as it stands, for a writer that did not claim it (a user's loop writing straight
        into the database); a run that is gone gets an epoch no row has."""
        with engine.connect() as conn:
            epoch = conn.execute(select(Run.lease).where(Run.id == run_id)).scalar_one_or_none()
        return cls(run_id, worker, -1 if epoch is None else int(epoch))

    def held(self) -> ColumnElement[bool]:
        """The WHERE clause of every write for the run: still this worker's, at this epoch."""
        return and_(Run.id == self.run_id, Run.worker == self.worker, Run.lease == self.epoch)

    def fence(self, conn: Connection) -> None:
        """The first statement of a transaction that writes for the run: it locks the run's row until the
        commit if the lease holds ('running' at this epoch); else LeaseLost, and the transaction rolls back."""
        done = conn.execute(update(Run).where(self.held(), Run.status == "running").values(lease=Run.lease))
        if not done.rowcount:
            raise LeaseLost(f"run {self.run_id} is no longer worker {self.worker}'s at lease {self.epoch}")

    def write(self, engine: Engine, body: Callable[[Connection], T]) -> T:
        """`body` in one fenced transaction. A run marked lost meanwhile is taken back first, when nothing else
        happened to it; otherwise LeaseLost and nothing is written."""
        seen = self.epoch
        try:
            with engine.begin() as conn:
                self.fence(conn)
                return body(conn)
        except LeaseLost:
            if not self.take_back(engine, seen=seen):
                raise
        with engine.begin() as conn:  # taken back, by this thread or another one of this worker
            self.fence(conn)
            return body(conn)

    def take_back(self, engine: Engine, *, seen: int | None = None) -> bool:
        """Take the run back if the reaper marked it lost and nothing else happened since; returns whether the
        lease holds again (also when another thread already took it back after this one saw epoch `seen`).
        In a transaction of its own, so the new epoch is only adopted once it is committed."""
        with self._lock:
            if seen is not None and seen != self.epoch:
                return True
            with engine.begin() as conn:
                note = reclaim_run(conn, self.run_id, worker=self.worker, epoch=self.epoch)
            if note is None:
                return False
            self.epoch += 2
            self.notes.append(note)
            return True


class Heartbeat:
    """A thread that stamps heartbeat_at every `interval` s (the database's clock) and reads every
    `poll_seconds` whether the run was asked to stop; on PostgreSQL a cancel's NOTIFY wakes it at once."""

    def __init__(
        self,
        engine: Engine,
        run_id: int,
        worker: str,
        interval: float,
        *,
        lease: Lease | None = None,
        wakeups: Wakeups | None = None,
        poll_seconds: float = CANCEL_POLL_SECONDS,
    ) -> None:
        self.engine, self.run_id, self.worker, self.interval = engine, run_id, worker, interval
        self.lease = lease or Lease.current(engine, run_id, worker)
        self.wakeups, self.poll_seconds = wakeups, poll_seconds
        self.stop_reason: str | None = None  # "cancelled" | "deleted" | "lost"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"collapsewatch-heartbeat-{run_id}", daemon=True)

    @property
    def notes(self) -> list[str]:
        return self.lease.notes

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.wakeups is not None:
            self.wakeups.interrupt()
        self._thread.join()

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.interval
        cancelled = f"{CANCEL}{self.run_id}"
        while not self._done.is_set():
            wait = min(self.poll_seconds, max(0.0, next_beat - time.monotonic()))
            if self.wakeups is not None:
                self.wakeups.wait(wait, stop=self._done, want=lambda payload: payload == cancelled)
            else:
                self._done.wait(wait)
            if self._done.is_set():
                return
            beat = time.monotonic() >= next_beat
            try:
                self._tick(beat=beat)
            except Exception:  # a database hiccup must not stop the training; the next tick retries
                log.exception("run %s: heartbeat failed", self.run_id)
                continue
            if beat:
                next_beat = time.monotonic() + self.interval

    def _tick(self, beat: bool) -> None:
        lease = self.lease
        seen = lease.epoch
        with self.engine.begin() as conn:
            if beat:
                conn.execute(update(Run).where(lease.held(), Run.status == "running").values(heartbeat_at=db_now(conn)))
            row = conn.execute(
                select(Run.status, Run.worker, Run.lease, Run.cancel_requested, Run.error).where(Run.id == self.run_id)
            ).first()
        if row is None:
            self.stop_reason = "deleted"
            return
        mine = row.worker == lease.worker
        ours = mine and row.lease == seen and row.status == "running"
        if mine and row.lease == seen + 1 and row.status == "failed" and (row.error or "").startswith(LOST_PREFIX):
            ours = lease.take_back(self.engine, seen=seen)  # we are alive: the verdict was wrong
        elif not ours and lease.epoch != seen:
            return  # the writer thread took it back meanwhile: the next tick reads it again
        if not ours:
            self.stop_reason = "lost"  # no longer ours, or ended by someone else
        elif row.cancel_requested:
            self.stop_reason = "cancelled"
