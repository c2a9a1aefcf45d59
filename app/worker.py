"""Workers: claim queued runs atomically, train them with a `DatabaseSink`, keep a heartbeat.

Lost workers: a 'running' run whose heartbeat is older than `stale_after_seconds` is marked failed
("worker lost (no heartbeat since ...)") by whoever notices first: every worker before each claim,
and the web server periodically. Its statistics up to the last flush are kept. A run is never
retried on its own; the user can queue it again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, or_, select, update

from app.models import Run, utcnow
from app.sink import DatabaseSink
from trainer import train

log = logging.getLogger(__name__)


class StopFlag(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    now = utcnow()
    claim = (
        update(Run)
        .where(Run.id == pick.scalar_subquery(), Run.status == "queued")
        .values(status="running", worker=worker, started_at=now, heartbeat_at=now)
        .returning(Run.id)
    )
    with engine.begin() as conn:
        row = conn.execute(claim).first()
    return int(row[0]) if row else None


def reap_stale_runs(engine: Engine, *, stale_after_seconds: float) -> list[int]:
    """Mark running runs whose worker went silent as failed; returns their ids."""
    cutoff = utcnow() - timedelta(seconds=stale_after_seconds)
    with engine.connect() as conn:
        stale = conn.execute(
            select(Run.id, Run.heartbeat_at, Run.worker).where(
                Run.status == "running", or_(Run.heartbeat_at < cutoff, Run.heartbeat_at.is_(None))
            )
        ).all()
    reaped = []
    for run_id, beat, worker in stale:
        since = beat.isoformat(timespec="seconds") if beat else "it started"
        same_beat = Run.heartbeat_at == beat if beat else Run.heartbeat_at.is_(None)
        with engine.begin() as conn:  # unless it beat again meanwhile
            done = conn.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "running", same_beat)
                .values(
                    status="failed",
                    finished_at=utcnow(),
                    error=f"worker lost (no heartbeat since {since}; worker {worker})",
                )
            )
        if done.rowcount:
            log.warning("run %s: worker %s lost, marked failed", run_id, worker)
            reaped.append(run_id)
    return reaped


class Heartbeat:
    """A thread that stamps heartbeat_at every `interval` s and polls for cancel every <= 0.25 s."""

    def __init__(self, engine: Engine, run_id: int, worker: str, interval: float) -> None:
        self.engine, self.run_id, self.worker, self.interval = engine, run_id, worker, interval
        self.stop_reason: str | None = None  # "cancelled" | "deleted" | "lost"
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
            if beat:
                conn.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.status == "running", Run.worker == self.worker)
                    .values(heartbeat_at=utcnow())
                )
            row = conn.execute(
                select(Run.status, Run.worker, Run.cancel_requested).where(Run.id == self.run_id)
            ).first()
        if row is None:
            self.stop_reason = "deleted"
        elif row.cancel_requested:
            self.stop_reason = "cancelled"
        elif row.status != "running" or row.worker != self.worker:
            self.stop_reason = "lost"  # reaped while we were alive (e.g. the machine was suspended)


def finish_run(engine: Engine, run_id: int, *, worker: str, status: str, error: str | None) -> None:
    """Store the final status unless the run already has one (or is no longer this worker's)."""
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running", Run.worker == worker)
            .values(status=status, error=error, finished_at=utcnow())
        )


def execute_run(
    engine: Engine, run_id: int, *, worker: str, heartbeat_seconds: float, shutdown: StopFlag | None
) -> str:
    """Train one claimed run to its end; returns the final status. Never raises for a training failure."""
    with engine.connect() as conn:
        config: dict[str, Any] = conn.execute(select(Run.config).where(Run.id == run_id)).scalar_one()
    sink = DatabaseSink(engine, run_id, worker=worker)
    with Heartbeat(engine, run_id, worker, heartbeat_seconds) as heartbeat:

        def should_stop() -> bool:
            return heartbeat.stop_reason is not None or sink.run_missing or bool(shutdown and shutdown.is_set())

        try:
            result = train(config, sink=sink, should_stop=should_stop)
            status, error = result.status, result.error
        except Exception as exc:  # train() reports failures in its result; this is the safety net
            log.exception("run %s: training raised", run_id)
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            sink.close()
    if status == "cancelled" and heartbeat.stop_reason is None and shutdown and shutdown.is_set():
        error = f"stopped because worker {worker} shut down"
        _set_error(engine, run_id, error)
    elif sink.error is not None and status != "failed":
        _set_error(engine, run_id, f"some statistics could not be stored: {type(sink.error).__name__}: {sink.error}")
    finish_run(engine, run_id, worker=worker, status=status, error=error)  # no-op when the sink already stored it
    log.info("run %s: %s", run_id, status)
    return status


def _set_error(engine: Engine, run_id: int, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id, Run.error.is_(None)).values(error=error))


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
    """Claim and train runs until `stop` is set (or `max_runs` are done); returns how many ran."""
    name = name or default_worker_name()
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set() and (max_runs is None or done < max_runs):
        try:
            reap_stale_runs(engine, stale_after_seconds=stale_after_seconds)
            run_id = claim_run(engine, worker=name)
        except Exception:  # the database is briefly unavailable: wait and try again
            log.exception("worker %s: claiming failed", name)
            stop.wait(max(poll_seconds, 2.0))
            continue
        if run_id is None:
            stop.wait(poll_seconds)
            continue
        log.info("worker %s: training run %s", name, run_id)
        execute_run(engine, run_id, worker=name, heartbeat_seconds=heartbeat_seconds, shutdown=stop)
        done += 1
    return done


# --- worker processes ------------------------------------------------------------------------------
def worker_process_main(
    database_url: str,
    name: str | None,
    heartbeat_seconds: float,
    stale_after_seconds: float,
    shutdown: Any,
    torch_threads: int | None,
    nice: int = 0,
) -> None:
    """Entry point of one spawned worker process; returns when `shutdown` (a multiprocessing Event) is set."""
    from app.db import make_engine

    if nice:
        os.nice(nice)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the parent decides when workers stop. SIGTERM sent to
    # this process alone stops it cleanly (its run ends as cancelled, with the reason recorded).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_parent, args=(shutdown, stop), daemon=True).start()
    if torch_threads:
        import torch  # several workers share the cores: without this each would use all of them

        torch.set_num_threads(torch_threads)
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


def _watch_parent(shutdown: Any, stop: threading.Event) -> None:
    """Stop when the parent asks, or when it died without asking (e.g. killed with -9)."""
    parent = multiprocessing.parent_process()
    while not shutdown.wait(1.0):
        if parent is not None and not parent.is_alive():
            break
    stop.set()


class WorkerPool:
    """N worker processes (multiprocessing 'spawn': no inherited engine, lock or CUDA state)."""

    def __init__(
        self,
        database_url: str,
        size: int,
        *,
        heartbeat_seconds: float = 1.0,
        stale_after_seconds: float = 15.0,
        nice: int = 0,
    ) -> None:
        self.database_url, self.size, self.nice = database_url, size, nice
        self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds
        self._ctx = multiprocessing.get_context("spawn")
        self._shutdown = self._ctx.Event()
        self.processes: list[Any] = []

    def start(self) -> None:
        threads = max(1, (os.cpu_count() or 1) // max(1, self.size))
        for i in range(self.size):
            process = self._ctx.Process(
                target=worker_process_main,
                args=(
                    self.database_url,
                    None,
                    self.heartbeat_seconds,
                    self.stale_after_seconds,
                    self._shutdown,
                    threads,
                    self.nice,
                ),
                name=f"collapsewatch-worker-{i}",
            )
            process.start()
            self.processes.append(process)

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to stop (a run in progress ends as cancelled) and wait; kill stragglers."""
        self._shutdown.set()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                log.warning("worker %s did not stop in %.0f s; terminating it", process.name, timeout)
                process.kill()
                process.join()
        self.processes.clear()
