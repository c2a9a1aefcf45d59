"""Workers: claim queued runs atomically, train them with a `DatabaseSink`, keep a heartbeat; and a
pool of worker processes that replaces those that die.

Lost workers: a 'running' run whose heartbeat is older than `stale_after_seconds` is marked failed
("worker lost (no heartbeat since ...)") by whoever notices first: every worker before each claim,
and the web server periodically. Its statistics up to the last flush are kept. Heartbeats and the
stale check both read the database's clock, so skew between hosts cannot reap a live run. A worker
that was only slow to beat (its write waited on a held SQLite lock) and still owns the run takes it
back: its next heartbeat or its end-of-run write wins over the mark, and the run's error keeps a note.
A run is never retried on its own; the user can queue it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from sqlalchemy import Engine, Float, bindparam, func, literal, or_, select, type_coerce, update
from sqlalchemy.engine import Connection as DbConnection
from sqlalchemy.sql.elements import ColumnElement

from app.models import Run, UTCDateTime, utcnow
from app.sink import DatabaseSink
from trainer import train
from trainer.memory_limit import limit_memory

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
    """Workers on this database (any machine) training a run whose heartbeat is recent."""
    live = select(func.count(Run.worker.distinct())).where(
        Run.status == "running", Run.heartbeat_at >= db_now(conn, -stale_after_seconds)
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


# --- worker processes ------------------------------------------------------------------------------
def worker_process_main(
    database_url: str,
    name: str | None,
    heartbeat_seconds: float,
    stale_after_seconds: float,
    stop_pipe: Connection,
    torch_threads: int | None,
    nice: int = 0,
    memory_mb: int = 0,
) -> None:
    """Entry point of one spawned worker process; returns once the parent closes its end of `stop_pipe`
    (or dies, which closes it too)."""
    from app.db import make_engine

    if nice:
        os.nice(nice)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the parent decides when workers stop. SIGTERM sent to
    # this process alone stops it cleanly (its run ends as cancelled, with the reason recorded).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_parent, args=(stop_pipe, stop), daemon=True).start()
    if torch_threads:
        import torch  # several workers share the cores: without this each would use all of them

        torch.set_num_threads(torch_threads)
    limit_worker_memory(memory_mb)
    engine = make_engine(database_url)
    try:
        run_worker(
            engine,
            name=name or default_worker_name(),
            heartbeat_seconds=heartbeat_seconds,
            stale_after_seconds=stale_after_seconds,
            stop=stop,
        )
    finally:
        engine.dispose()


def limit_worker_memory(memory_mb: int) -> None:
    """Cap this worker process at its baseline plus `memory_mb` (0: no cap). A tiny run first loads what
    training loads lazily (the optimizer's compiled paths, the thread pool and its stacks), so the
    baseline holds the runtime and the cap measures a run's own memory."""
    if memory_mb <= 0:
        return
    train({"epochs": 1, "batch_size": 16, "hidden_sizes": [8], "data": {"n_samples": 64}})
    cap = limit_memory(memory_mb)
    if cap is None:
        log.warning("could not limit this worker's memory to %s MB more than it uses now", memory_mb)
    else:
        log.info("worker memory capped at %s MB (%s MB for a run)", cap, memory_mb)


def _watch_parent(stop_pipe: Connection, stop: threading.Event) -> None:
    """Set `stop` once the parent closes its end of this worker's own pipe, or dies. Not one Event shared
    by all workers: `set()` of a multiprocessing Event waits for every waiter to wake, a killed one never does."""
    with contextlib.suppress(EOFError, OSError):
        stop_pipe.recv_bytes()  # nothing is ever sent: this returns at EOF, when the parent closed or died
    stop.set()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    configured: int
    alive: int
    restarts: int  # dead workers replaced since the pool started
    last_exit: str | None  # the latest death, for /api/health


@dataclasses.dataclass
class _Slot:
    """One of the pool's places: its current process, and how quickly its predecessors died."""

    index: int
    process: Any = None
    stop_pipe: Connection | None = None  # the parent's end: closing it stops the worker
    started: float = 0.0
    quick_deaths: int = 0  # in a row, each soon after its start: the respawn delay doubles
    respawn_at: float | None = None


class WorkerPool:
    """N worker processes (multiprocessing 'spawn': no inherited engine, lock or CUDA state), kept at N:
    a supervising thread notices a death at once (process sentinels), logs it with the exit code and
    starts a replacement, later each time a replacement dies soon after starting (a crash loop)."""

    def __init__(
        self,
        database_url: str,
        size: int,
        *,
        heartbeat_seconds: float = 1.0,
        stale_after_seconds: float = 15.0,
        nice: int = 0,
        memory_mb: int = 0,
        respawn_delay: float = 0.5,
        max_respawn_delay: float = 30.0,
        healthy_after: float = 60.0,  # a worker that lived this long resets the delay
    ) -> None:
        self.database_url, self.size, self.nice, self.memory_mb = database_url, size, nice, memory_mb
        self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds
        self.respawn_delay, self.max_respawn_delay, self.healthy_after = respawn_delay, max_respawn_delay, healthy_after
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(size)]
        self._lock = threading.Lock()  # slots are changed by the supervisor and read by status() and stop()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        self.last_exit: str | None = None

    @property
    def processes(self) -> list[Any]:
        with self._lock:
            return [s.process for s in self._slots if s.process is not None]

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._supervisor = threading.Thread(target=self._supervise, name="collapsewatch-pool", daemon=True)
        self._supervisor.start()

    def status(self) -> PoolStatus:
        with self._lock:
            alive = sum(1 for s in self._slots if s.process is not None and s.process.is_alive())
            return PoolStatus(self.size, alive, self.restarts, self.last_exit)

    def _spawn(self, slot: _Slot) -> None:
        threads = max(1, (os.cpu_count() or 1) // max(1, self.size))
        timing = (self.heartbeat_seconds, self.stale_after_seconds)
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_process_main,
            args=(self.database_url, None, *timing, reader, threads, self.nice, self.memory_mb),
            name=f"collapsewatch-worker-{slot.index}",
        )
        process.start()
        reader.close()  # the child holds the only read end: it sees EOF when we close ours, or die
        slot.process, slot.stop_pipe, slot.started, slot.respawn_at = process, writer, time.monotonic(), None

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
                due = [s.respawn_at for s in self._slots if s.respawn_at is not None]
            timeout = min([1.0] + [max(0.0, at - time.monotonic()) for at in due])
            if sentinels:
                wait(sentinels, timeout)
            else:
                self._stopping.wait(timeout)
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self._slots:
                    if slot.process is not None and not slot.process.is_alive():
                        self._bury(slot)
                    if slot.respawn_at is not None and time.monotonic() >= slot.respawn_at:
                        self._spawn(slot)
                        self.restarts += 1

    def _bury(self, slot: _Slot) -> None:
        process, lived = slot.process, time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < self.healthy_after else 1
        delay = min(self.max_respawn_delay, self.respawn_delay * 2 ** (slot.quick_deaths - 1))
        self.last_exit = f"{process.name} (pid {process.pid}) died with {describe_exit(process.exitcode)}"
        log.warning("worker %s after %.0f s; starting another in %.1f s", self.last_exit, lived, delay)
        if slot.stop_pipe is not None:
            slot.stop_pipe.close()
        process.close()
        slot.process, slot.stop_pipe, slot.respawn_at = None, None, time.monotonic() + delay

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to stop (a run in progress ends as cancelled) and wait; kill stragglers."""
        with self._lock:  # once set, the supervisor starts nothing more
            self._stopping.set()
            slots = [(s.process, s.stop_pipe) for s in self._slots if s.process is not None]
            for slot in self._slots:
                slot.process, slot.stop_pipe, slot.respawn_at = None, None, None
        for _, pipe in slots:
            if pipe is not None:
                pipe.close()
        deadline = time.monotonic() + timeout
        for process, _ in slots:
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in slots:
            if process.is_alive():
                log.warning("worker %s did not stop in %.0f s; terminating it", process.name, timeout)
                process.kill()
                process.join()
        if self._supervisor is not None:
            self._supervisor.join()
