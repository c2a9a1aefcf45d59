"""The lease epoch: a worker whose run was marked lost, claimed again or deleted writes nothing into it; its
owner takes back a wrong "worker lost" only while nothing else happened; older databases get the column."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from factories import LONG, TINY, WorkerThread, add_run, make_chunk, make_eval, make_warning, skew_clock, wait_until
from sqlalchemy import Engine, event, func, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from app.storage import crud
from app.storage.clock import db_now
from app.storage.engine import init_db, make_engine
from app.storage.models import EvalStat, Run, RunWarning, StatChunk
from app.storage.notify import TRIGGER
from app.worker.claim import claim_run, finish_run, reap_stale_runs
from app.worker.lease import Heartbeat, Lease, bound_idle_transactions
from app.worker.sink import DatabaseSink
from trainer import TrainResult


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The same tests on a SQLite file and on PostgreSQL (a private schema)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("engine")
    else:
        yield request.getfixturevalue("pg_engines")[0]


BOUNDS = (
    "idle_in_transaction_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "tcp_user_timeout",
)


def _requeue(engine: Engine, run_id: int) -> None:
    """What queueing a lost run again amounts to: queued, no worker (statistics left as they are)."""
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(status="queued", worker=None, finished_at=None))


def _snapshot(engine: Engine, run_id: int) -> dict[str, Any]:
    """Everything a worker could write for the run."""
    with engine.connect() as conn:
        row = conn.execute(select(Run).where(Run.id == run_id)).mappings().one()
        counts = {
            table.__name__: conn.execute(select(func.count()).where(table.run_id == run_id)).scalar_one()
            for table in (StatChunk, EvalStat, RunWarning)
        }
    keys = ("status", "worker", "lease", "steps", "last_step", "heartbeat_at", "error", "data_lost", "info")
    return {k: row[k] for k in keys} | {"warning_count": row["warning_count"]} | counts


def _end(status: str = "completed") -> TrainResult:
    return TrainResult(status, {}, steps=20, epochs=1, duration_s=1.0, final_eval=None, warnings=[])


@pytest.mark.parametrize("second", ["host-b:2", "host-a:1"], ids=["another-worker", "the-same-name"])
def test_a_worker_back_after_its_run_was_reaped_and_claimed_again_writes_nothing(db: Engine, second: str) -> None:
    run_id = add_run(db)
    assert claim_run(db, worker="host-a:1") == run_id
    old = Lease.of(db, run_id, "host-a:1")
    assert old is not None and old.epoch == 1
    sink = DatabaseSink(db, run_id, worker=old.worker, lease=old)
    sink.on_batches(make_chunk(0, 10))
    sink.flush()
    # host-a goes silent: the reaper marks the run lost, it is queued again and claimed (by another worker, or
    # by one that reuses host-a's name: a name check alone would let host-a's writes through then)
    assert reap_stale_runs(db, stale_after_seconds=-1) == [run_id]
    _requeue(db, run_id)
    assert claim_run(db, worker=second) == run_id
    new = Lease.of(db, run_id, second)
    assert new is not None and new.epoch == 3
    before = _snapshot(db, run_id)
    assert (before["steps"], before["StatChunk"], before["status"], before["worker"]) == (10, 1, "running", second)

    # host-a comes back: its writer, heartbeat, final write and take-back are all refused
    sink.on_batches(make_chunk(10, 10))
    sink.on_eval(make_eval(19))
    sink.on_warning(make_warning(15))
    sink.on_end(_end())
    assert sink.lease_lost and sink.error is None and sink.lost_batches == 0  # refused, not failed
    heartbeat = Heartbeat(db, run_id, "host-a:1", 0.2, lease=old)
    heartbeat._tick(beat=True)
    assert heartbeat.stop_reason == "lost"
    finish_run(db, run_id, worker="host-a:1", status="completed", error=None, duration_s=1.0, lease=old)
    assert not old.take_back(db) and old.epoch == 1
    assert _snapshot(db, run_id) == before

    # the new owner's lease holds: its heartbeat lands and its writer writes
    Heartbeat(db, run_id, second, 0.2, lease=new)._tick(beat=True)
    with db.connect() as conn:
        assert conn.execute(select(Run.heartbeat_at).where(Run.id == run_id)).scalar_one() >= before["heartbeat_at"]
    writer = DatabaseSink(db, run_id, worker=second, lease=new)
    writer.on_batches(make_chunk(10, 5))
    writer.on_end(_end())
    assert not writer.lease_lost
    after = _snapshot(db, run_id)
    assert (after["status"], after["steps"], after["last_step"], after["EvalStat"]) == ("completed", 15, 14, 0)


def test_the_owner_takes_back_a_mark_only_while_nothing_else_happened_to_the_run(db: Engine) -> None:
    run_id = add_run(db)
    assert claim_run(db, worker="w:1") == run_id
    lease = Lease.of(db, run_id, "w:1")
    assert lease is not None
    # marked lost while w:1 was alive (a held lock silenced it): w:1 takes it back, with a new epoch
    assert reap_stale_runs(db, stale_after_seconds=-1) == [run_id]
    sink = DatabaseSink(db, run_id, worker="w:1", lease=lease)
    sink.on_batches(make_chunk(0, 10))  # its next write finds the mark and takes the run back first
    sink.flush()
    assert lease.epoch == 3 and len(lease.notes) == 1
    state = _snapshot(db, run_id)
    assert (state["status"], state["lease"], state["steps"]) == ("running", 3, 10)
    assert str(state["error"]).startswith("marked failed for a while: worker lost (no heartbeat since ")
    # marked again, queued again, claimed by a worker of the same name and lost once more: to a name check
    # this looks like the mark w:1 may take back; the epoch says two claims happened since
    assert reap_stale_runs(db, stale_after_seconds=-1) == [run_id]
    _requeue(db, run_id)
    assert claim_run(db, worker="w:1") == run_id
    assert reap_stale_runs(db, stale_after_seconds=-1) == [run_id]
    assert not lease.take_back(db)
    sink.on_batches(make_chunk(10, 10))
    sink.close()
    assert sink.lease_lost
    state = _snapshot(db, run_id)
    assert (state["status"], state["lease"], state["steps"]) == ("failed", 6, 10)


def test_a_deleted_run_refuses_its_workers_writes_even_were_its_id_reused(db: Engine) -> None:
    run_id = add_run(db, **TINY)
    assert claim_run(db, worker="w:1") == run_id
    lease = Lease.of(db, run_id, "w:1")
    assert lease is not None and lease.epoch == 1
    sink = DatabaseSink(db, run_id, worker="w:1", lease=lease)
    sink.on_batches(make_chunk(0, 5))
    sink.flush()
    with Session(db) as session:
        crud.delete_run(session=session, run_id=run_id)
    assert add_run(db) > run_id  # ids are not reused ...
    with db.begin() as conn:  # ... but were one: a new run under the old id, claimed at the same epoch
        config = conn.execute(select(Run.config).order_by(Run.id.desc()).limit(1)).scalar_one()
        values = {"id": run_id, "name": "reused", "config": config, "status": "running", "worker": "w:2", "lease": 1}
        conn.execute(insert(Run).values(**values))
    sink.on_batches(make_chunk(5, 5))
    sink.on_end(_end())
    assert sink.lease_lost
    state = _snapshot(db, run_id)
    assert (state["status"], state["worker"], state["steps"], state["StatChunk"]) == ("running", "w:2", 0, 0)


def test_a_training_worker_whose_run_was_claimed_again_stops_and_writes_nothing_more(engine: Engine) -> None:
    run_id = add_run(engine, **LONG)
    with WorkerThread(engine, name="host-a:1", stale_after_seconds=60.0, max_runs=1) as worker:
        wait_until(lambda: _snapshot(engine, run_id)["steps"] >= 20, timeout=30, what="training")
        with engine.begin() as conn:  # reaped and claimed by host-b in one step: no beat of host-a between
            conn.execute(update(Run).where(Run.id == run_id).values(worker="host-b:2", lease=Run.lease + 2))
            taken = conn.execute(select(Run.steps).where(Run.id == run_id)).scalar_one()
        worker.thread.join(10)  # max_runs=1: the thread ends once host-a gave the run up
        assert not worker.thread.is_alive(), "host-a went on training a run that is no longer its"
    state = _snapshot(engine, run_id)
    assert (state["status"], state["worker"], state["lease"], state["steps"]) == ("running", "host-b:2", 3, taken)
    assert state["error"] is None


def test_a_database_from_before_the_lease_gets_it_and_its_queued_runs_train(db: Engine) -> None:
    run_id = add_run(db, **TINY)
    with db.begin() as conn:  # as an older version left it: no lease column, no host reports, no trigger
        conn.execute(text("ALTER TABLE run DROP COLUMN lease"))
        conn.execute(text("DROP TABLE workerhost"))
        if db.dialect.name == "postgresql":
            conn.execute(text("DROP FUNCTION collapsewatch_notify_v1() CASCADE"))
    url = db.url.render_as_string(hide_password=False)
    upgraded = make_engine(url)
    try:
        assert init_db(upgraded) == ["run.lease"]
        assert inspect(upgraded).has_table("workerhost")
        if db.dialect.name == "postgresql":  # the wake-ups' trigger is back, on this schema's run table
            with upgraded.connect() as conn:
                trigger = text("SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('run') AND NOT tgisinternal")
                assert conn.execute(trigger).scalars().all() == [TRIGGER]
        assert _snapshot(upgraded, run_id)["lease"] == 0  # existing rows take the default
        with WorkerThread(upgraded, max_runs=1) as worker:
            worker.thread.join(30)
        state = _snapshot(upgraded, run_id)
        assert (state["status"], state["lease"], state["steps"]) == ("completed", 1, 4)
        assert init_db(upgraded) == []
    finally:
        upgraded.dispose()


def _lock_timeout(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.autocommit = True  # a SET outside any transaction: no rollback undoes it
    dbapi_connection.execute("SET lock_timeout = '10s'")
    dbapi_connection.autocommit = False


@pytest.mark.postgres
def test_a_worker_session_left_inside_a_transaction_is_ended_and_its_run_reaped(pg_url: str, pg_engines: Any) -> None:
    """A worker that stops talking mid-transaction (its machine cut off) cannot hold its run's row for good."""
    worker = make_engine(pg_url)
    bound_idle_transactions(worker, stale_after_seconds=3.0)  # idle timeout 2 s, keepalives after 1 s
    run_id = add_run(worker, **TINY)
    with contextlib.ExitStack() as stack:
        stack.callback(worker.dispose)
        with worker.connect() as conn:
            settings = [conn.execute(text(f"SHOW {name}")).scalar_one() for name in BOUNDS]
        # the idle limit, then the keepalives and user timeout (ms) that end a silent machine's session
        assert settings == ["2s", "1", "1", "3", "4000"]
        assert claim_run(worker, worker="w:1") == run_id
        lease = Lease.of(worker, run_id, "w:1")
        assert lease is not None
        held = stack.enter_context(worker.connect())  # closed even if the test fails: it holds a row lock
        transaction = held.begin()
        lease.fence(held)  # the run's row locked, then nothing more from this worker
        reaper = pg_engines[0]
        event.listen(reaper, "connect", _lock_timeout)  # were the session never ended: a failure, not a hang
        reaper.dispose()  # its pooled connections came before the listener
        started = time.monotonic()
        assert reap_stale_runs(reaper, stale_after_seconds=-1) == [], "a locked row waits for the next pass"
        assert time.monotonic() - started < 5, "the reaper waited on the lock past its own limit"
        # once PostgreSQL has ended the silent session (its idle limit, 2 s), a pass marks the run
        wait_until(lambda: reap_stale_runs(reaper, stale_after_seconds=-1) == [run_id], timeout=15,
                   what="the stalled session ended and its run reaped")  # fmt: skip
        assert time.monotonic() - started > 1.5, "the run was reaped before its writer's session ended"
        with pytest.raises(DBAPIError) as ended:
            transaction.commit()
        assert ended.value.connection_invalidated
        held.invalidate()
        assert _snapshot(pg_engines[0], run_id)["status"] == "failed"


class _StallingSink(DatabaseSink):
    """A writer whose first transaction stalls after its lease check (its thread starved, its machine paused)."""

    stall_seconds = 0.0

    def _write_in(self, conn: Any, records: list[tuple[str, Any]]) -> None:
        time.sleep(self.stall_seconds)
        self.stall_seconds = 0.0
        super()._write_in(conn, records)


@pytest.mark.postgres
def test_a_write_whose_session_postgresql_ended_is_retried_not_lost(pg_url: str, pg_engines: Any) -> None:
    worker = make_engine(pg_url)
    bound_idle_transactions(worker, stale_after_seconds=3.0)
    run_id = add_run(worker, **TINY)
    try:
        assert claim_run(worker, worker="w:1") == run_id
        lease = Lease.of(worker, run_id, "w:1")
        sink = _StallingSink(worker, run_id, worker="w:1", lease=lease)
        sink.stall_seconds = 2.5  # past the 2 s idle limit: PostgreSQL ends the session mid-transaction
        sink.on_batches(make_chunk(0, 10))
        sink.on_end(_end())
        sink.close()
        assert (sink.retries, sink.lost_batches, sink.error) == (1, 0, None)
        state = _snapshot(pg_engines[0], run_id)
        assert (state["status"], state["steps"], state["data_lost"]) == ("completed", 10, None)
    finally:
        worker.dispose()


@pytest.mark.postgres
def test_a_row_locked_by_a_stalled_writer_does_not_hold_up_the_reaper(pg_engines: list[Engine]) -> None:
    """A worker stalled mid-write holds its run's row; the reaper waits a second for it, then leaves that run
    to its next pass instead of blocking (and every claim behind it, on every host)."""
    engine = pg_engines[0]
    run_id = add_run(engine)
    with engine.begin() as conn:  # claimed by a worker whose heartbeat is a minute old by the database's clock
        stale = update(Run).where(Run.id == run_id)
        conn.execute(stale.values(status="running", worker="stalled:1", heartbeat_at=db_now(conn, -60)))
    holder = pg_engines[1].connect()
    reaped: list[list[int]] = []
    reaper = threading.Thread(target=lambda: reaped.append(reap_stale_runs(engine, stale_after_seconds=15)))
    try:
        holder.execute(select(Run.id).where(Run.id == run_id).with_for_update())  # the stalled transaction
        reaper.start()
        reaper.join(5)
        assert not reaper.is_alive(), "the reaper is still waiting on the stalled writer's lock"
        assert reaped == [[]], "a locked run is left to the next pass"
    finally:
        holder.rollback()
        holder.close()
        reaper.join(10)
    assert reap_stale_runs(engine, stale_after_seconds=15) == [run_id], "once released, the next pass marks it"


@pytest.mark.parametrize("end", ["sink", "finish_run"])
def test_a_worker_with_a_skewed_clock_stamps_the_database_clock(
    db: Engine, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """started_at, finished_at and a warning's created_at are the database's times, as heartbeats are: a worker
    whose clock is an hour ahead cannot make a run look an hour long, or started before it was queued."""
    assert skew_clock(monkeypatch, timedelta(hours=1)) >= 2, "the app's clock readers were found"
    run_id = add_run(db)
    assert claim_run(db, worker="host-a:1") == run_id
    lease = Lease.of(db, run_id, "host-a:1")
    if end == "sink":
        sink = DatabaseSink(db, run_id, worker="host-a:1", lease=lease)
        sink.on_batches(make_chunk(0, 10))
        sink.on_warning(make_warning(5))
        sink.on_end(_end())
        sink.close()
    else:
        finish_run(db, run_id, worker="host-a:1", status="completed", error=None, duration_s=1.0, lease=lease)
    with db.connect() as conn:
        now = conn.execute(select(db_now(conn))).scalar_one()
        started, finished = conn.execute(select(Run.started_at, Run.finished_at).where(Run.id == run_id)).one()
        warned = conn.execute(select(RunWarning.created_at).where(RunWarning.run_id == run_id)).scalars().all()
    assert len(warned) == (1 if end == "sink" else 0)
    now = now.replace(tzinfo=None)
    for name, stamp in (
        ("started_at", started),
        ("finished_at", finished),
        *(("a warning's created_at", w) for w in warned),
    ):
        lag = (now - stamp.replace(tzinfo=None)).total_seconds()
        assert 0 <= lag < 60, f"{name} is {lag:.0f} s before the database's now: the worker's clock, not the database's"
