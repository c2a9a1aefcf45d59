"""A SQLite file engine never makes a request wait for a pooled connection.

With SQLAlchemy's default cap (5 + 10 overflow), 20 dashboard tabs deadlocked the server for 30 s:
the requests waiting for a connection held every worker thread, and the sessions holding the
connections needed a thread to close (bench/concurrency.py found it).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from app.storage.engine import make_engine


def test_more_connections_at_once_than_the_server_has_worker_threads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cw.db'}")
    engine.pool._timeout = 1.0  # a capped pool would fail in 1 s instead of 30
    connections = []
    try:
        for _ in range(60):  # anyio's default thread limiter runs 40 at once
            connections.append(engine.connect())
            assert connections[-1].execute(text("PRAGMA busy_timeout")).scalar() == 30000
    finally:
        for conn in connections:
            conn.close()
        engine.dispose()
