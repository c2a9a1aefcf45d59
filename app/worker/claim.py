"""A worker's life: claim queued runs atomically, train them with a `DatabaseSink`, keep a heartbeat.
The processes that run this loop are supervised by app/worker/pool.py.

Lost workers: a 'running' run whose heartbeat is older than `stale_after_seconds` is marked failed
("worker lost (no heartbeat since ...)") by whoever notices first: every worker before each claim,
and the web server periodically. Its statistics up to the last flush are kept. Heartbeats and the
stale check both read the database's clock, so skew between hosts cannot reap a live run. A worker
that was only slow to beat (its write waited on a held SQLite lock) and still owns the run takes it
back: its next heartbeat or its end-of-run write wins over the mark, and the run's error keeps a note.
A run is never retried on its own; the user can queue it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, Float, bindparam, func, literal, or_, select, type_coerce, update
from sqlalchemy.engine import Connection as DbConnection
from sqlalchemy.sql.elements import ColumnElement

from app.storage.models import Run, UTCDateTime, utcnow
from app.worker.sink import DatabaseSink
from trainer import train

log = logging.getLogger(__name__)
LOST_PREFIX = "worker lost ("  # how the reaper's verdict starts; a worker that comes back looks for it


class StopFlag(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def db_now(bind: Engine | DbConnection, offset_seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database's clock plus `offset_seconds`, as naive UTC like `UTCDateTime` stores it. Evaluated
    by the database, so every host that writes or compares heartbeats reads the same clock."""
    if bind.dialect.name == "postgresql":
        offset = func.make_interval(0, 0, 0, 0, 0, 0, bindparam(None, offset_seconds, type_=Float))
        # now() is a timestamptz: timezone('UTC', ...) makes it naive UTC whatever the session's TimeZone
        clock: Any = func.timezone("UTC", func.now() + offset)
    else:
        # microseconds, as SQLAlchemy writes them, so stored timestamps compare correctly as text
        clock = func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{offset_seconds:+.6f} seconds")
    return type_coerce(clock, UTCDateTime())


def claim_run(engine: Engine, *, worker: str) -> int | None:
    """Atomically move the oldest queued run to 'running' for `worker`; None when the queue is empty.
    Two workers never get the same run: the UPDATE re-checks status='queued' and only one commits it
    (SQLite serialises writers; PostgreSQL locks the row, and SKIP LOCKED lets the other pick the next)."""
    with engine.connect() as conn:  # a plain read first, so idle workers do not take the write lock
        if conn.execute(select(Run.id).where(Run.status == "queued").limit(1)).first() is None:
            return None
    queued = Run.__table__.alias("queued")
    pick = select(queued.c.id).where(queued.c.status == "queued").order_by(queued.c.id).limit(1)
    if engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    claim = (
        update(Run)
        .where(Run.id == pick.scalar_subquery(), Run.status == "queued")
        .values(status="running", worker=worker, started_at=utcnow(), heartbeat_at=db_now(engine))
        .returning(Run.id)
    )
    with engine.begin() as conn:
        row = conn.execute(claim).first()
    return int(row[0]) if row else None


def _stale(bind: Engine | DbConnection, stale_after_seconds: float) -> ColumnElement[bool]:
    return or_(Run.heartbeat_at < db_now(bind, -stale_after_seconds), Run.heartbeat_at.is_(None))


def confirm_window(heartbeat_seconds: float) -> float:
    """How long a reaper watches a silent run, with the database writable, before it marks it lost."""
    return max(2.0, 3 * heartbeat_seconds)


def _wait_writable(engine: Engine) -> float:
    """Take and release the write lock once (an UPDATE that matches no row); returns the seconds it
    waited. While another connection holds the lock this waits, as every heartbeat does."""
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == -1).values(worker=Run.worker))
    return time.monotonic() - started


def reap_stale_runs(engine: Engine, *, stale_after_seconds: float, confirm_seconds: float = 0.0) -> list[int]:
    """Mark running runs whose worker went silent as failed; returns their ids.

    A held write lock (a long transaction, a backup) silences every heartbeat at once, and once it is
    released the heartbeats and the reaper race for it. With `confirm_seconds`, a silent run is marked
    only if its heartbeat is still the same that long after the reaper itself could write: a worker that
    was alive but blocked has landed its next beat by then; a dead one has not."""
    candidates = _silent_runs(engine, stale_after_seconds)
    if candidates and confirm_seconds > 0:
        _wait_writable(engine)
        time.sleep(confirm_seconds)
        if _wait_writable(engine) > confirm_seconds:  # locked again meanwhile: look again next time
            return []
        candidates = [c for c in _silent_runs(engine, stale_after_seconds) if c in candidates]
    reaped = []
    for run_id, beat, worker in candidates:
        since = beat.isoformat(timespec="seconds") if beat else "it started"
        same_beat = Run.heartbeat_at == beat if beat else Run.heartbeat_at.is_(None)
        with engine.begin() as conn:  # re-checked in the UPDATE: unless it beat again meanwhile
            done = conn.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "running", same_beat, _stale(engine, stale_after_seconds))
                .values(
                    status="failed",
                    finished_at=db_now(engine),
                    error=f"{LOST_PREFIX}no heartbeat since {since}; worker {worker})",
                )
            )
        if done.rowcount:
            log.warning("run %s: worker %s lost, marked failed", run_id, worker)
            reaped.append(run_id)
    return reaped


def _silent_runs(engine: Engine, stale_after_seconds: float) -> list[tuple[int, datetime | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Run.id, Run.heartbeat_at, Run.worker).where(
                Run.status == "running", _stale(engine, stale_after_seconds)
            )
        ).all()
    return [(int(r[0]), r[1], r[2]) for r in rows]


def count_busy_workers(conn: DbConnection, *, stale_after_seconds: float) -> int:
    """Workers on this database (any machine) training a run whose heartbeat is recent (a user's own loop
    streaming an external run is no worker)."""
    live = select(func.count(Run.worker.distinct())).where(
        Run.status == "running", Run.external.is_(False), Run.heartbeat_at >= db_now(conn, -stale_after_seconds)
    )
    return int(conn.execute(live).scalar() or 0)


def reclaim_run(conn: DbConnection, run_id: int, *, worker: str) -> str | None:
    """Take back a run that the reaper marked lost while `worker`, still its owner, was alive; returns
    the note now in its error ("marked failed for a while: worker lost (...); ..."), None if not so marked."""
    note = literal("marked failed for a while: ") + Run.error + literal(f"; worker {worker} was alive and went on")
    row = conn.execute(
        update(Run)
        .where(Run.id == run_id, Run.worker == worker, Run.status == "failed", Run.error.startswith(LOST_PREFIX))
        .values(status="running", finished_at=None, heartbeat_at=db_now(conn), error=note)
        .returning(Run.error)
    ).first()
    if row is None:
        return None
    log.warning("run %s: had been marked lost while worker %s was alive; taken back", run_id, worker)
    return str(row[0])


class Heartbeat:
    """A thread that stamps heartbeat_at every `interval` s and polls for cancel every <= 0.25 s."""

    def __init__(self, engine: Engine, run_id: int, worker: str, interval: float) -> None:
        self.engine, self.run_id, self.worker, self.interval = engine, run_id, worker, interval
        self.stop_reason: str | None = None  # "cancelled" | "deleted" | "lost"
        self.notes: list[str] = []  # one per time the run was taken back from the reaper
        self._reclaim = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"collapsewatch-heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._done.wait(min(0.25, self.interval)):
            try:
                self._tick(beat=time.monotonic() >= next_beat)
            except Exception:  # a database hiccup must not stop the training; the next tick retries
                log.exception("run %s: heartbeat failed", self.run_id)
                continue
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.interval

    def _tick(self, beat: bool) -> None:
        with self.engine.begin() as conn:
            if self._reclaim:  # writes first: on SQLite a read-then-write transaction can fail to upgrade
                note = reclaim_run(conn, self.run_id, worker=self.worker)
                self.notes += [note] if note else []
                self._reclaim = False
            if beat:
                conn.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.status == "running", Run.worker == self.worker)
                    .values(heartbeat_at=db_now(conn))
                )
            row = conn.execute(
                select(Run.status, Run.worker, Run.cancel_requested, Run.error).where(Run.id == self.run_id)
            ).first()
        if row is None:
            self.stop_reason = "deleted"
        elif row.cancel_requested:
            self.stop_reason = "cancelled"
        elif row.worker == self.worker and row.status == "failed" and (row.error or "").startswith(LOST_PREFIX):
            self._reclaim = True  # we are alive: the verdict was wrong, take the run back on the next tick
        elif row.status != "running" or row.worker != self.worker:
            self.stop_reason = "lost"  # no longer ours, or ended by someone else


def finish_run(
    engine: Engine, run_id: int, *, worker: str, status: str, error: str | None, duration_s: float | None = None
) -> str | None:
    """Store the final status unless the run already has one (or is no longer this worker's). A run
    marked lost while this worker was alive is taken back first; returns the note then."""
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow()}
    if duration_s is not None:
        values["duration_s"] = duration_s
    with engine.begin() as conn:
        note = reclaim_run(conn, run_id, worker=worker)
        conn.execute(
            update(Run).where(Run.id == run_id, Run.status == "running", Run.worker == worker).values(**values)
        )
    return note


def execute_run(
    engine: Engine, run_id: int, *, worker: str, heartbeat_seconds: float, shutdown: StopFlag | None
) -> str:
    """Train one claimed run to its end; returns the final status. Never raises for a training failure."""
    with engine.connect() as conn:
        config: dict[str, Any] | None = conn.execute(select(Run.config).where(Run.id == run_id)).scalar_one_or_none()
    if config is None:
        log.info("run %s: deleted before it started", run_id)
        return "deleted"
    sink = DatabaseSink(engine, run_id, worker=worker)
    duration_s = None
    with Heartbeat(engine, run_id, worker, heartbeat_seconds) as heartbeat:

        def should_stop() -> bool:
            return heartbeat.stop_reason is not None or sink.run_missing or bool(shutdown and shutdown.is_set())

        try:
            result = train(config, sink=sink, should_stop=should_stop)
            status, error, duration_s = result.status, result.error, result.duration_s
        except Exception as exc:  # train() reports failures in its result; this is the safety net
            log.exception("run %s: training raised", run_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            sink.close()
    shut_down = status == "cancelled" and heartbeat.stop_reason is None and shutdown and shutdown.is_set()
    if shut_down:
        error = f"stopped because worker {worker} shut down"
    # a no-op when the sink already stored the end (the usual case)
    note = finish_run(engine, run_id, worker=worker, status=status, error=error, duration_s=duration_s)
    if shut_down:
        _set_error(engine, run_id, worker=worker, error=str(error))
    elif sink.error is not None and status != "failed":
        lost = f"some statistics could not be stored: {type(sink.error).__name__}: {sink.error}"
        _set_error(engine, run_id, worker=worker, error=lost)
    notes = heartbeat.notes + ([note] if note else [])
    if notes:
        _add_note(engine, run_id, worker=worker, note="; ".join(notes))
    log.info("run %s: %s", run_id, status)
    return status


def _set_error(engine: Engine, run_id: int, *, worker: str, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id, Run.worker == worker, Run.error.is_(None)).values(error=error))


def _add_note(engine: Engine, run_id: int, *, worker: str, note: str) -> None:
    """Append to the run's error: the final write replaced the note that the run carried while running."""
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id, Run.worker == worker)
            .values(error=func.coalesce(Run.error + literal("; "), literal("")) + literal(note))
        )


def _fail_claimed_run(engine: Engine, run_id: int, *, worker: str, exc: Exception) -> None:
    error = f"worker {worker} could not run it: {type(exc).__name__}: {exc}"
    try:
        finish_run(engine, run_id, worker=worker, status="failed", error=error)
    except Exception:  # the database is gone too: the reaper marks the run lost once its heartbeat is stale
        log.exception("run %s: could not be marked failed", run_id)


def run_worker(
    engine: Engine,
    *,
    name: str | None = None,
    heartbeat_seconds: float = 1.0,
    stale_after_seconds: float = 15.0,
    poll_seconds: float = 0.5,
    stop: StopFlag | None = None,
    max_runs: int | None = None,
) -> int:
    """Claim and train runs until `stop` is set (or `max_runs` are done); returns how many ran.
    No exception ends it: one outside training fails that run, with the reason, and the next is claimed."""
    name = name or default_worker_name()
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set() and (max_runs is None or done < max_runs):
        try:
            reap_stale_runs(
                engine, stale_after_seconds=stale_after_seconds, confirm_seconds=confirm_window(heartbeat_seconds)
            )
            run_id = claim_run(engine, worker=name)
        except Exception:  # the database is briefly unavailable: wait and try again
            log.exception("worker %s: claiming failed", name)
            stop.wait(max(poll_seconds, 2.0))
            continue
        if run_id is None:
            stop.wait(poll_seconds)
            continue
        log.info("worker %s: training run %s", name, run_id)
        try:
            execute_run(engine, run_id, worker=name, heartbeat_seconds=heartbeat_seconds, shutdown=stop)
        except Exception as exc:  # outside train(): a database error, a bad row; this run fails, not the worker
            log.exception("worker %s: run %s failed outside training", name, run_id)
            _fail_claimed_run(engine, run_id, worker=name, exc=exc)
            stop.wait(poll_seconds)  # a failure that repeats for every run does not spin
        done += 1
    return done
