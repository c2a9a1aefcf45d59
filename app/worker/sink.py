"""`DatabaseSink`: the trainer's statistics into the database without slowing the training loop.

Every call only puts a record on a queue; one writer thread drains whatever has piled up and
writes it in one transaction (a `StatChunk` row of packed arrays per chunk of batches, via
`executemany` on the raw DBAPI cursor, no ORM objects).
Batch statistics are written at most every `write_interval` seconds: a transaction has a fixed
cost of a millisecond or two of the writer's CPU (and GIL), paid five times a second instead of
once per chunk (20-25 times a second at a thousand steps per second). Anything else (start, warnings, evaluations,
the end, a flush) is written at once, with whatever batches are waiting.
A worker's sink writes under its lease (app/worker/lease.py): once the run is no longer the worker's,
nothing more is written, and the records are dropped (they are not the run's any more).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy import Engine, exists, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from app.storage.clock import db_now
from app.storage.models import SEVERITY_RANK, EvalStat, Run
from app.storage.rollups import Rollup
from app.storage.values import to_json_safe
from app.storage.writes import eval_values, insert_warning, write_chunks
from app.worker.lease import Lease, LeaseLost
from trainer import BATCH_COLUMNS, BatchChunk, CollapseWarning, EvalRecord, RunInfo, TrainResult

log = logging.getLogger(__name__)
_STOP = object()
# a failed write is retried after these delays (then every 5 s) while the run trains; once it has
# ended, for GIVE_UP_AFTER seconds more before what is left is recorded as lost
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
GIVE_UP_AFTER = 120.0
MAX_ROWS_PER_WRITE = 10_000  # batch rows per transaction when the writer has fallen behind
WRITE_INTERVAL = 0.2  # seconds between batch-statistics transactions, at most 1/5 of the live latency
IDLE_SESSION_ENDED = "25P03"  # PostgreSQL ended the session for sitting idle inside a transaction


def _batch_rows(item: Any) -> int:
    return len(item[1]) if item is not _STOP and item[0] == "batches" else 0


def _urgent(item: Any) -> bool:
    return item is _STOP or item[0] != "batches"


class DatabaseSink:
    """A trainer `Sink` that stores one run's records; `on_end` flushes everything and stops the writer."""

    def __init__(
        self,
        engine: Engine,
        run_id: int,
        *,
        worker: str | None = None,
        lease: Lease | None = None,
        write_interval: float = WRITE_INTERVAL,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.engine, self.run_id, self.worker, self.lease = engine, run_id, worker, lease
        self.write_interval, self.give_up_after = write_interval, give_up_after
        self.lost_batches = 0  # batches never stored, after every retry
        self.lost_notes: list[str] = []
        self.retries = 0  # writes tried again after a failure
        self.error: BaseException | None = None  # the first error that lost records, after every retry
        self.run_missing = False  # the run was deleted while training: further records are dropped
        self.lease_lost = False  # the run is no longer this worker's (app/worker/lease.py): dropped too
        self.notes_stored = 0  # the lease's take-back notes committed with the end of the run
        self._end_notes = 0
        self._max_severity = -1
        self._rollup: Rollup | None = None
        self._rows_before: int | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name=f"collapsewatch-writer-{run_id}", daemon=True)
        self._thread.start()

    # --- the Sink protocol: called from the training thread, never blocks on the database ---------
    def on_start(self, info: RunInfo) -> None:
        self._queue.put(("start", info))

    def on_batches(self, chunk: BatchChunk) -> None:
        self._queue.put(("batches", chunk))

    def on_eval(self, record: EvalRecord) -> None:
        self._queue.put(("eval", record))

    def on_warning(self, warning: CollapseWarning) -> None:
        self._queue.put(("warning", warning))

    def on_end(self, result: TrainResult) -> None:
        self._queue.put(("end", result))
        self.close()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is committed."""
        done = threading.Event()
        self._queue.put(("flush", done))
        done.wait(timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    # --- the writer thread ---------------------------------------------------------------------
    def _drain(self) -> None:
        stopping = False
        last_write = -float("inf")
        while not stopping:
            items = [self._queue.get()]
            rows = _batch_rows(items[0])
            deadline = last_write + self.write_interval
            # gather until the interval since the last write is over, or something must go out now;
            # capped: a writer far behind commits in bounded steps, holding the write lock briefly each time
            while rows < MAX_ROWS_PER_WRITE and not _urgent(items[-1]):
                wait = deadline - time.monotonic()
                try:
                    items.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
                except queue.Empty:
                    if wait > 0:
                        continue  # the interval is over: take what else has piled up, without waiting
                    break
                rows += _batch_rows(items[-1])
            stopping = any(item is _STOP for item in items)
            records = [item for item in items if item is not _STOP and item[0] != "flush"]
            flushes = [item[1] for item in items if item is not _STOP and item[0] == "flush"]
            if records and not self.run_missing and not self.lease_lost:
                stopping |= self._write_with_retries(records, flushes, stopping)
                last_write = time.monotonic()
            for done in flushes:
                done.set()

    def _write_with_retries(
        self, records: list[tuple[str, Any]], flushes: list[threading.Event], stopping: bool
    ) -> bool:
        """Write, or keep the records and try again with backoff: a held lock or a full disk delays data,
        it does not drop it. What arrives meanwhile joins the retry (its flushes wait for it). What still
        cannot be written `give_up_after` seconds after the run ended (or what the database refuses
        outright) is counted and recorded on the run. Returns whether the sink was closed meanwhile."""
        backlog, attempt, ended_at = records, 0, None
        while True:
            error = self._write_safely(backlog)
            if error is None or self.run_missing or self.lease_lost:
                return stopping
            if stopping or any(kind == "end" for kind, _ in backlog):
                ended_at = ended_at if ended_at is not None else time.monotonic()
            late = ended_at is not None and time.monotonic() - ended_at > self.give_up_after
            if not self._retryable(error) or late:
                self._record_loss(backlog, error)
                return stopping
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            self.retries += 1
            log.warning("run %s: write failed (%s); retry %d in %.1f s", self.run_id, error, attempt, delay)
            time.sleep(delay)
            while True:  # what arrived meanwhile goes out with the retry
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                elif item[0] == "flush":
                    flushes.append(item[1])
                else:
                    backlog.append(item)

    def _retryable(self, error: BaseException) -> bool:
        """A lock, a full disk, a lost connection: the database may take it later. Raw DBAPI cursors
        (executemany) raise the driver's own OperationalError, SQLAlchemy wraps the others. A session the
        database ended (a worker's idle-in-transaction limit, app/worker/lease.py: SQLSTATE 25P03, an
        InternalError) or whose connection SQLAlchemy invalidated is a lost connection too."""
        driver = getattr(self.engine.dialect.dbapi, "OperationalError", OperationalError)
        ended = getattr(getattr(error, "orig", error), "sqlstate", None) == IDLE_SESSION_ENDED
        lost = ended or bool(getattr(error, "connection_invalidated", False))
        return isinstance(error, OperationalError | driver) or lost

    def _write_safely(self, records: list[tuple[str, Any]]) -> BaseException | None:
        """None when written; else the error, with the writer's in-memory state as before the attempt."""
        saved = copy.deepcopy((self._rollup, self._rows_before, self._max_severity))
        try:
            self._write(records)
            self.notes_stored = self._end_notes
            return None
        except LeaseLost as exc:  # refused, not failed: the run was marked, claimed again or deleted
            self._rollup, self._rows_before, self._max_severity = saved
            log.warning("run %s: %s; its remaining records are dropped", self.run_id, exc)
            self.lease_lost = True
            return exc
        except IntegrityError as exc:
            self._rollup, self._rows_before, self._max_severity = saved
            with self.engine.connect() as conn:
                self.run_missing = not conn.execute(select(exists().where(Run.id == self.run_id))).scalar()
            if not self.run_missing:
                self._failed(exc)
            return exc
        except Exception as exc:  # keep draining: training must not stall because the disk is full
            self._rollup, self._rows_before, self._max_severity = saved
            self._failed(exc)
            return exc

    def _failed(self, exc: BaseException) -> None:
        log.warning("run %s: writing statistics failed: %s", self.run_id, exc)

    def _record_loss(self, records: list[tuple[str, Any]], error: BaseException) -> None:
        chunks = [payload for kind, payload in records if kind == "batches" and len(payload)]
        batches = sum(len(c) for c in chunks)
        parts = [f"{batches} batches (steps {int(chunks[0].steps[0])}-{int(chunks[-1].steps[-1])})"] if chunks else []
        for kind, label in (("eval", "evaluation(s)"), ("warning", "warning(s)"), ("end", "the end of the run")):
            count = sum(1 for k, _ in records if k == kind)
            if count:
                parts.append(label if kind == "end" else f"{count} {label}")
        self.lost_batches += batches
        self.error = self.error or error
        note = f"{', '.join(parts) or 'records'} could not be stored ({type(error).__name__}: {str(error)[:200]})"
        self.lost_notes.append(note)
        log.error("run %s: %s", self.run_id, note)
        for delay in (*RETRY_DELAYS, None):  # a short note: worth a few more tries of its own
            try:
                with self.engine.begin() as conn:
                    values = {"data_lost": "; ".join(self.lost_notes)}
                    mine = self.lease.held() if self.lease is not None else Run.id == self.run_id
                    conn.execute(update(Run).where(Run.id == self.run_id, mine).values(**values))
                return
            except Exception as exc:
                if delay is None:
                    log.error("run %s: could not record the loss either: %s", self.run_id, exc)
                    return
                time.sleep(delay)

    def _write(self, records: list[tuple[str, Any]]) -> None:
        """One transaction; a worker's fenced by its lease (its run's row locked until the commit)."""
        if self.lease is not None:
            self.lease.write(self.engine, lambda conn: self._write_in(conn, records))
            return
        with self.engine.begin() as conn:
            self._write_in(conn, records)

    def _write_in(self, conn: Any, records: list[tuple[str, Any]]) -> None:
        chunks = [payload for kind, payload in records if kind == "batches"]
        if chunks:
            self._write_chunks(conn, chunks)
        for kind, payload in records:
            if kind == "start":
                self._write_start(conn, payload)
            elif kind == "eval":
                conn.execute(insert(EvalStat), [eval_values(self.run_id, payload)])
            elif kind == "warning":
                self._write_warning(conn, payload)
            elif kind == "end":
                self._write_end(conn, payload)

    def _write_chunks(self, conn: Any, chunks: list[BatchChunk]) -> None:
        chunks = [c for c in chunks if len(c)]
        if not chunks:
            return
        if self._rollup is None and self._rows_before is None:
            self._rows_before = int(conn.execute(select(Run.steps).where(Run.id == self.run_id)).scalar() or 0)
            # blocks must cover a prefix of the run's rows (app/storage/reads.py relies on it): a sink that
            # joins a run with rows already written leaves its rows to be read raw
            width = chunks[0].class_hist.shape[1]
            self._rollup = Rollup(len(BATCH_COLUMNS), width) if self._rows_before == 0 else None
        write_chunks(conn, self.run_id, chunks, self._rollup)

    def _write_start(self, conn: Any, info: RunInfo) -> None:
        details = to_json_safe({k: v for k, v in dataclasses.asdict(info).items() if k != "config"})
        conn.execute(update(Run).where(Run.id == self.run_id).values(info=details, num_classes=info.num_classes))

    def _write_warning(self, conn: Any, warning: CollapseWarning) -> None:
        insert_warning(conn, self.run_id, warning)
        rank = SEVERITY_RANK.get(warning.severity, 0)
        values: dict[str, Any] = {"warning_count": Run.warning_count + 1}
        if rank > self._max_severity:
            self._max_severity = rank
            values["max_severity"] = warning.severity
        conn.execute(update(Run).where(Run.id == self.run_id).values(**values))

    def _write_end(self, conn: Any, result: TrainResult) -> None:
        # the first final status wins: a run already reaped as lost is not overwritten
        unfinished = Run.status.in_(("queued", "running")) if self.worker is None else Run.worker == self.worker
        error, notes = result.error, self.lease.notes if self.lease is not None else []
        if notes:  # the final status and the note that the run was taken back from the reaper land together
            error, self._end_notes = "; ".join(e for e in (result.error, *notes) if e), len(notes)
        conn.execute(
            update(Run)
            .where(Run.id == self.run_id, Run.status.in_(("queued", "running")), unfinished)
            .values(status=result.status, error=error, finished_at=db_now(conn), duration_s=result.duration_s)
        )
