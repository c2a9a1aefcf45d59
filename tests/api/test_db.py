"""The database layer: SQLite settings, schema upgrades that keep old runs, the non-blocking sink."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from factories import LOCAL, add_run, make_chunk, make_warning, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, inspect, text

from app.core.config import Settings
from app.main import create_app
from app.storage.engine import init_db, make_engine
from app.worker import sink as sink_module
from app.worker.sink import DatabaseSink
from trainer import BATCH_COLUMNS, preset

# the first schema: no parent/dataset links, no per-run summary, a BatchStat with two statistics
OLD_SCHEMA = """
CREATE TABLE run (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, preset VARCHAR NOT NULL,
    status VARCHAR NOT NULL, config JSON NOT NULL, num_classes INTEGER NOT NULL, created_at DATETIME NOT NULL,
    started_at DATETIME, finished_at DATETIME, heartbeat_at DATETIME, worker VARCHAR,
    cancel_requested BOOLEAN NOT NULL, error TEXT, steps INTEGER NOT NULL);
CREATE TABLE batchstat (run_id INTEGER NOT NULL REFERENCES run (id), step BIGINT NOT NULL, epoch INTEGER NOT NULL,
    nan_mask BIGINT NOT NULL, class_hist BLOB NOT NULL, loss DOUBLE, entropy_mean DOUBLE, PRIMARY KEY (run_id, step));
"""


def test_sqlite_is_set_up_for_concurrent_readers_and_one_writer(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        pragma = {
            name: conn.execute(text(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
        }
    assert pragma == {"journal_mode": "wal", "busy_timeout": 30000, "synchronous": 1, "foreign_keys": 1}


def test_an_old_database_is_upgraded_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO run VALUES (1, 'old run', 'fixed', 'completed', ?, 8, '2024-05-01 10:00:00.000000',"
            " NULL, '2024-05-01 10:05:00.000000', NULL, 'w', 0, NULL, 3)",
            (__import__("json").dumps(preset("fixed").to_dict()),),
        )
        conn.executemany(
            "INSERT INTO batchstat VALUES (1, ?, 0, ?, ?, ?, ?)",
            [(s, 0, b"", 2.0 - s / 10, 1.5) for s in range(3)]
            # a NaN loss: NULL with its bit set (that version's bits follow BATCH_COLUMNS)
            + [(3, 1 << BATCH_COLUMNS.index("loss"), np.arange(8, dtype=np.float32).tobytes(), None, 1.25)],
        )
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=tmp_path / "data", workers=0)
    app = create_app(settings)
    # the per-batch table of that version became chunks of packed arrays
    assert not inspect(app.state.engine).has_table("batchstat")
    assert {c["name"] for c in inspect(app.state.engine).get_columns("run")} >= {"latest", "parent_id", "info"}
    with TestClient(app, base_url=LOCAL) as client:
        (item,) = client.get("/api/runs").json()["items"]
        assert (item["id"], item["name"], item["status"], item["steps"]) == (1, "old run", "completed", 3)
        assert item["finished_at"].startswith("2024-05-01T10:05:00")
        assert client.get("/api/runs/1").json()["config"] == preset("fixed").to_dict()
        stats = client.get("/api/runs/1/stats").json()
        assert stats["steps"] == [0, 1, 2, 3] and stats["columns"]["loss"] == [2.0, 1.9, 1.8, None]
        assert stats["columns"]["entropy_mean"] == [1.5, 1.5, 1.5, 1.25]
        assert stats["class_hist"][3] == list(range(8)) and stats["class_hist"][0] == [0.0] * 8
        # a statistic the old version did not record is null, not NaN; its NaN loss stays a NaN
        assert stats["columns"]["logit_max"] == [None] * 4 and stats["nonfinite"] == {"loss": [[3, "NaN"]]}
        assert client.post("/api/runs", json={}).status_code == 201
    assert init_db(app.state.engine) == []  # a second start has nothing left to add


def _count_rows(engine: Engine) -> int:
    """Batches stored (chunk rows hold many)."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(SUM(rows), 0) FROM statchunk")).scalar_one())


def _stored(engine: Engine) -> tuple[int, int]:
    """(batches, last step) over every stored chunk."""
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT SUM(rows), MAX(last_step) FROM statchunk")).one())


def test_the_sink_never_blocks_training_and_writes_in_few_transactions(settings: Settings, engine: Engine) -> None:
    run_id = add_run(engine)
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(time.monotonic()))
    blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    sink = DatabaseSink(engine, run_id)
    started = time.perf_counter()
    for start in range(0, 10_000, 50):
        sink.on_batches(make_chunk(start, 50))
    assert time.perf_counter() - started < 0.5, "on_batches waited for the database"
    time.sleep(0.3)
    blocker.execute("COMMIT")
    blocker.close()
    sink.close()
    assert sink.error is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT steps, last_step FROM run")).one() == (10_000, 9_999)
    assert _stored(engine) == (10_000, 9_999)
    assert len(commits) <= 3, f"{len(commits)} transactions for 200 chunks"


def test_a_writer_far_behind_catches_up_in_bounded_transactions(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_module, "MAX_ROWS_PER_WRITE", 1_000)
    run_id = add_run(engine)
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(time.monotonic()))
    blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # everything piles up in the queue meanwhile
    sink = DatabaseSink(engine, run_id)
    for start in range(0, 10_000, 50):
        sink.on_batches(make_chunk(start, 50))
    time.sleep(0.2)
    blocker.execute("COMMIT")
    blocker.close()
    sink.close()
    assert sink.error is None
    assert _stored(engine) == (10_000, 9_999)
    with engine.connect() as conn:
        # the rollup carries its partial blocks across writes: every complete block exists
        assert conn.execute(text("SELECT COUNT(*) FROM statblock")).scalar_one() == 625 + 39 + 2
    assert 10 <= len(commits) <= 12, f"{len(commits)} transactions for 10,000 rows capped at 1,000 each"


def test_records_become_visible_while_the_run_goes_on(engine: Engine) -> None:
    run_id = add_run(engine)
    sink = DatabaseSink(engine, run_id)
    sink.on_batches(make_chunk(0, 5))
    sink.flush(timeout=10)
    assert _count_rows(engine) == 5
    sink.on_batches(make_chunk(5, 5))
    wait_until(lambda: _count_rows(engine) == 10, timeout=5, what="the second chunk")
    sink.close()


def test_batches_wait_for_the_write_interval_but_a_warning_goes_out_at_once(engine: Engine) -> None:
    run_id = add_run(engine)
    sink = DatabaseSink(engine, run_id, write_interval=30.0)
    sink.on_batches(make_chunk(0, 5))
    wait_until(lambda: _count_rows(engine) == 5, timeout=5, what="the first chunk (no write before it)")
    sink.on_batches(make_chunk(5, 5))
    time.sleep(0.5)
    assert _count_rows(engine) == 5, "a second chunk inside the interval waits for more"
    sink.on_warning(make_warning(step=7))
    wait_until(lambda: _count_rows(engine) == 10, timeout=5, what="the waiting chunk, with the warning")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM runwarning")).scalar_one() == 1
    sink.on_batches(make_chunk(10, 5))
    started = time.monotonic()
    sink.close()  # the end of a run writes everything without waiting for the interval
    assert time.monotonic() - started < 5 and _count_rows(engine) == 15 and sink.error is None


def _impatient_engine(settings: Settings) -> Engine:
    """A second engine on the same file that waits only 0.1 s for a lock: a held lock fails its writes."""
    from sqlalchemy import create_engine

    return create_engine(settings.database_url, connect_args={"check_same_thread": False, "timeout": 0.1})


def test_a_lock_held_past_the_timeout_delays_statistics_and_loses_none(settings: Settings, engine: Engine) -> None:
    # the probe: a lock held 40-65 s made the writer drop whole transactions (50 steps, 2 evals) while its
    # in-memory rollup had already advanced, so charts showed blocks no raw read returned
    run_id = add_run(engine)
    impatient = _impatient_engine(settings)
    blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    sink = DatabaseSink(impatient, run_id)
    for start in range(0, 5_000, 50):
        sink.on_batches(make_chunk(start, 50))
    time.sleep(2.0)  # twenty lock timeouts' worth
    blocker.execute("COMMIT")
    blocker.close()
    sink.close()
    assert sink.retries >= 3, "the held lock made writes fail"
    assert sink.error is None and sink.lost_batches == 0
    assert _stored(engine) == (5_000, 4_999)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT steps, data_lost FROM run")).one() == (5_000, None)
        # the rollup was restored with each failed transaction: exactly the blocks of 5,000 rows
        assert conn.execute(text("SELECT COUNT(*) FROM statblock")).scalar_one() == 312 + 19 + 1


def test_what_cannot_be_stored_after_the_run_ends_is_recorded_on_the_run(settings: Settings, engine: Engine) -> None:
    run_id = add_run(engine)
    blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    sink = DatabaseSink(_impatient_engine(settings), run_id, give_up_after=0.3)
    sink.on_batches(make_chunk(0, 100))
    sink.flush()
    blocker.execute("BEGIN IMMEDIATE")  # held until the writer has given up on what follows
    sink.on_batches(make_chunk(100, 50))
    closer = threading.Thread(target=sink.close)
    closer.start()
    time.sleep(1.5)
    blocker.execute("COMMIT")
    blocker.close()
    closer.join(10)
    assert sink.lost_batches == 50 and sink.error is not None
    assert _stored(engine) == (100, 99)
    with engine.connect() as conn:
        lost = conn.execute(text("SELECT data_lost FROM run")).scalar_one()
    assert lost.startswith("50 batches (steps 100-149) could not be stored (OperationalError")
