"""A worker's life: claim queued runs atomically, train them with a `DatabaseSink`, keep a heartbeat.
The processes that run this loop are supervised by app/worker/pool.py.

Each claim raises the run's lease; the worker's heartbeat, statistics and final write all carry that epoch
and are refused once the run was marked, claimed again or deleted (app/worker/lease.py). An idle worker
waits for a NOTIFY on PostgreSQL (app/worker/wakeup.py) and polls every `poll_seconds` all the same.

Lost workers: a 'running' run whose heartbeat is older than `stale_after_seconds` is marked failed
("worker lost (no heartbeat since ...)") by whoever notices first: every worker before each claim,
and the web server periodically. Its statistics up to the last flush are kept. Heartbeats and the
stale check both read the database's clock, so skew between hosts cannot reap a live run. A worker
that was only slow to beat (its write waited on a held SQLite lock) and still owns the run takes it
back, if nothing else happened to the run since (its lease): its next heartbeat or its end-of-run write
wins over the mark, and the run's error keeps a note.
A run is never retried on its own; the user can queue it again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, literal, or_, select, text, update
from sqlalchemy.engine import Connection as DbConnection
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from app.storage.clock import db_now
from app.storage.models import Run
from app.storage.notify import QUEUED
from app.worker.lease import LOST_PREFIX, Heartbeat, Lease, LeaseLost, reclaim_run
from app.worker.sink import DatabaseSink
from app.worker.wakeup import StopFlag, Wakeups
from trainer import train

log = logging.getLogger(__name__)


def default_worker_name(host: str | None = None) -> str:
    """`host:pid`: unique among live processes, and the host part says which machine (or `--name`)."""
    return f"{host or socket.gethostname()}:{os.getpid()}"


def claim_run(engine: Engine, *, worker: str) -> int | None:
    """Atomically move the oldest queued run to 'running' for `worker`, raising its lease (the worker's epoch,
    read back by `Lease.of`); None when the queue is empty. Two workers never get the same run: the UPDATE
    re-checks status='queued' and only one commits it (SQLite serialises writers; PostgreSQL locks the row,
    and SKIP LOCKED lets the other pick the next)."""
    with engine.connect() as conn:  # a plain read first, so idle workers do not take the write lock
        if conn.execute(select(Run.id).where(Run.status == "queued").limit(1)).first() is None:
            return None
    queued = Run.__table__.alias("queued")
    pick = select(queued.c.id).where(queued.c.status == "queued").order_by(queued.c.id).limit(1)
    if engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    now = db_now(engine)  # the database's clock, as every host reads it (a worker's may be skewed)
    claim = (
        update(Run)
        .where(Run.id == pick.scalar_subquery(), Run.status == "queued")
        .values(status="running", worker=worker, started_at=now, heartbeat_at=now, lease=Run.lease + 1)
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
        try:
            with engine.begin() as conn:  # re-checked in the UPDATE: unless it beat again meanwhile
                if conn.dialect.name == "postgresql":  # a row locked by its writer: alive, or ended by its timeouts
                    conn.execute(text(f"SET LOCAL lock_timeout = '{REAP_LOCK_TIMEOUT_MS}ms'"))
                done = conn.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == "running", same_beat, _stale(engine, stale_after_seconds))
                    .values(
                        status="failed",
                        lease=Run.lease + 1,  # fences out the worker, should it come back (app/worker/lease.py)
                        finished_at=db_now(engine),
                        error=f"{LOST_PREFIX}no heartbeat since {since}; worker {worker})",
                    )
                )
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.info("run %s: its row is locked by a writer; looked at again next time", run_id)
            continue
        if done.rowcount:
            log.warning("run %s: worker %s lost, marked failed", run_id, worker)
            reaped.append(run_id)
    return reaped


# the reaper waits this long for a silent run's row lock, then leaves the run to its next pass: a worker stalled
# mid-write must not hold up every reaper, and the claims that follow them, on every host
REAP_LOCK_TIMEOUT_MS = 1000
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_not_available


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


def finish_run(
    engine: Engine,
    run_id: int,
    *,
    worker: str,
    status: str,
    error: str | None,
    duration_s: float | None = None,
    lease: Lease | None = None,
) -> str | None:
    """Store the final status unless the run already has one (or is no longer this worker's). A run marked
    lost while this worker was alive is taken back first; returns the note then (with a `lease`, the note
    goes to `lease.notes`). Without a lease (a user's loop writing straight into the database) by name only."""
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": db_now(engine)}
    if duration_s is not None:
        values["duration_s"] = duration_s
    if lease is not None:
        try:
            lease.write(engine, lambda conn: conn.execute(update(Run).where(lease.held()).values(**values)))
        except LeaseLost:  # usually the sink stored the end already; else the run is no longer ours
            log.debug("run %s: the final write of worker %s found the run ended or no longer its", run_id, worker)
        return None
    with engine.begin() as conn:
        note = reclaim_run(conn, run_id, worker=worker)
        conn.execute(
            update(Run).where(Run.id == run_id, Run.status == "running", Run.worker == worker).values(**values)
        )
    return note


def execute_run(
    engine: Engine,
    run_id: int,
    *,
    worker: str,
    heartbeat_seconds: float,
    shutdown: StopFlag | None,
    lease: Lease | None = None,
    wakeups: Wakeups | None = None,
) -> str:
    """Train one claimed run to its end; returns the final status. Never raises for a training failure.
    Every write carries `lease` (read here right after the claim when not given)."""
    lease = lease or Lease.of(engine, run_id, worker)
    with engine.connect() as conn:
        config: dict[str, Any] | None = conn.execute(select(Run.config).where(Run.id == run_id)).scalar_one_or_none()
    if config is None or lease is None:
        log.info("run %s: deleted or no longer worker %s's before it started", run_id, worker)
        return "deleted"
    sink = DatabaseSink(engine, run_id, worker=worker, lease=lease)
    duration_s = None
    with Heartbeat(engine, run_id, worker, heartbeat_seconds, lease=lease, wakeups=wakeups) as heartbeat:

        def should_stop() -> bool:
            stopped = heartbeat.stop_reason is not None or sink.run_missing or sink.lease_lost
            return stopped or bool(shutdown and shutdown.is_set())

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
    finish_run(engine, run_id, worker=worker, status=status, error=error, duration_s=duration_s, lease=lease)
    stored = "; ".join(lease.notes[: sink.notes_stored]) or None  # written with the end by the sink
    if shut_down:
        _set_error(engine, lease, error=str(error), stored=stored)
    elif sink.error is not None and status != "failed":
        lost = f"some statistics could not be stored: {type(sink.error).__name__}: {sink.error}"
        _set_error(engine, lease, error=lost, stored=stored)
    if lease.notes[sink.notes_stored :]:
        _add_note(engine, lease, note="; ".join(lease.notes[sink.notes_stored :]))
    log.info("run %s: %s", run_id, status)
    return status


def _set_error(engine: Engine, lease: Lease, *, error: str, stored: str | None) -> None:
    """Set the run's error unless it has one (a training failure's); the take-back notes `stored` with the
    end stay after it."""
    if stored is None:
        where, value = Run.error.is_(None), error
    else:
        where, value = Run.error == stored, f"{error}; {stored}"
    with engine.begin() as conn:
        conn.execute(update(Run).where(lease.held(), where).values(error=value))


def _add_note(engine: Engine, lease: Lease, *, note: str) -> None:
    """Append to the run's error: the final write replaced the note that the run carried while running."""
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(lease.held())
            .values(error=func.coalesce(Run.error + literal("; "), literal("")) + literal(note))
        )


def _fail_claimed_run(engine: Engine, run_id: int, *, worker: str, lease: Lease | None, exc: Exception) -> None:
    error = f"worker {worker} could not run it: {type(exc).__name__}: {exc}"
    if lease is None:  # the epoch was never read: no write is safe, the reaper marks the run once it is silent
        log.error("run %s: left to the reaper (%s)", run_id, error)
        return
    try:
        finish_run(engine, run_id, worker=worker, status="failed", error=error, lease=lease)
    except Exception:  # the database is gone too: the reaper marks the run lost once its heartbeat is stale
        log.exception("run %s: could not be marked failed", run_id)


def _is_queued(payload: str) -> bool:
    return payload.startswith(QUEUED)


def run_worker(
    engine: Engine,
    *,
    name: str | None = None,
    heartbeat_seconds: float = 1.0,
    stale_after_seconds: float = 15.0,
    poll_seconds: float = 0.5,
    stop: StopFlag | None = None,
    max_runs: int | None = None,
    listen: bool = True,
) -> int:
    """Claim and train runs until `stop` is set (or `max_runs` are done); returns how many ran.
    No exception ends it: one outside training fails that run, with the reason, and the next is claimed.
    Idle, it waits `poll_seconds` between claims, or less: a NOTIFY (PostgreSQL, unless not `listen`) ends
    the wait as soon as a run is queued."""
    name = name or default_worker_name()
    stop = stop or threading.Event()
    wakeups = Wakeups(engine, enabled=listen)  # listening before the first claim: no queued run goes unheard
    done = 0
    try:
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
                wakeups.wait(poll_seconds, stop=stop, want=_is_queued)
                continue
            log.info("worker %s: training run %s", name, run_id)
            lease: Lease | None = None
            try:
                lease = Lease.of(engine, run_id, name)
                if lease is None:
                    log.info("worker %s: run %s was deleted or taken right after the claim", name, run_id)
                else:
                    timing = {"heartbeat_seconds": heartbeat_seconds}
                    execute_run(engine, run_id, worker=name, shutdown=stop, lease=lease, wakeups=wakeups, **timing)
            except Exception as exc:  # outside train(): a database error, a bad row; this run fails, not the worker
                log.exception("worker %s: run %s failed outside training", name, run_id)
                _fail_claimed_run(engine, run_id, worker=name, lease=lease, exc=exc)
                stop.wait(poll_seconds)  # a failure that repeats for every run does not spin
            done += 1
    finally:
        wakeups.close()
    return done
