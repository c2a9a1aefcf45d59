"""Engines and schema: SQLite tuned for one writer per process and many readers, or PostgreSQL.

`init_db` creates missing tables and adds missing columns (e.g. `run.lease`, with its default for
existing rows), so a database written by an older version keeps its runs, and on PostgreSQL installs the
trigger behind the workers' wake-ups. Nothing here builds an engine at import time.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import Column
from sqlmodel import SQLModel

from app.storage.notify import install_notify_trigger

log = logging.getLogger(__name__)


def normalize_url(url: str) -> str:
    """Plain `postgresql://` URLs would pick psycopg2, which we do not ship: use psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web server read while a worker writes; NORMAL sync is durable across process
    # crashes (only an OS crash can lose the last commits), which is what a monitor needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`: SQLite (file or `sqlite://` in memory) or PostgreSQL via psycopg."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        in_memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
        # a file: no cap on connections (they are cheap file handles). With the default cap (5 + 10),
        # more requests than that in the thread pool deadlock for pool_timeout (30 s): those waiting
        # for a connection hold every thread, and closing a session (FastAPI runs a sync dependency's
        # exit in the thread pool) needs one to give its connection back.
        pooling = {"poolclass": StaticPool} if in_memory else {"pool_size": 10, "max_overflow": -1}
        engine = create_engine(
            url,
            # the sqlite3 module's own lock timeout; busy_timeout below is the one SQLite applies
            connect_args={"check_same_thread": False, "timeout": 30},
            **pooling,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def dialect_name(engine: Engine) -> str:
    return engine.dialect.name  # "sqlite" | "postgresql"


def _default_sql(engine: Engine, value: Any) -> str | None:
    if isinstance(value, bool):
        return ("1" if value else "0") if engine.dialect.name == "sqlite" else ("TRUE" if value else "FALSE")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def _column_ddl(engine: Engine, column: Column[Any]) -> str:
    """`name TYPE [DEFAULT x NOT NULL]` for ALTER TABLE ADD COLUMN; without a literal default the
    column is added nullable (SQLite refuses NOT NULL without a default)."""
    ddl = f"{engine.dialect.identifier_preparer.quote(column.name)} {column.type.compile(dialect=engine.dialect)}"
    scalar = column.default is not None and column.default.is_scalar
    default = _default_sql(engine, column.default.arg) if scalar else None  # type: ignore[union-attr]
    if default is not None:
        ddl += f" DEFAULT {default}" + ("" if column.nullable else " NOT NULL")
    return ddl


def init_db(engine: Engine) -> list[str]:
    """Create or upgrade the schema; returns the `table.column` names that were added."""
    from app.storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # processes that start together on a new database (a server and its workers on other machines)
            # take turns: two CREATE TABLEs of one name at once collide in PostgreSQL's catalog
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('collapsewatch schema'))"))
        SQLModel.metadata.create_all(conn)
        added = _add_missing_columns(engine, conn)
    _convert_batchstat(engine)
    if added:
        log.info("database upgraded: added columns %s", ", ".join(added))
    if install_notify_trigger(engine):
        log.info("database upgraded: NOTIFY trigger for queued and cancelled runs installed")
    return added


def _add_missing_columns(engine: Engine, conn: Connection) -> list[str]:
    added: list[str] = []
    inspector = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                # existing rows get the column's default, or NULL (read back as "not recorded")
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {_column_ddl(engine, column)}"))
                added.append(f"{table.name}.{column.name}")
    for table in SQLModel.metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    return added


def _convert_batchstat(engine: Engine) -> None:
    """Databases written before statistics were stored in chunks have a `batchstat` table, one row
    per batch (NULL plus a bit of `nan_mask` for NaN): its rows become StatChunk rows, run by run,
    in one transaction, and the table is dropped."""
    from app.storage.chunks import CHUNK_COLUMNS, CHUNK_ROWS, chunk_rows, executemany, insert_sql
    from trainer import BATCH_COLUMNS, BatchChunk

    if not inspect(engine).has_table("batchstat"):
        return
    present = [c["name"] for c in inspect(engine).get_columns("batchstat")]
    names = [n for n in BATCH_COLUMNS if n in present]
    quote = engine.dialect.identifier_preparer.quote
    select_sql = (
        f"SELECT step, epoch, nan_mask, class_hist, {', '.join(map(quote, names))} FROM batchstat "
        "WHERE run_id = :run ORDER BY step"
    )
    insert = insert_sql(engine, "statchunk", CHUNK_COLUMNS)
    converted = 0
    with engine.begin() as conn:
        for (run_id,) in conn.execute(text("SELECT DISTINCT run_id FROM batchstat")).all():
            result = conn.execute(text(select_sql), {"run": run_id})
            while rows := result.fetchmany(CHUNK_ROWS):
                values = np.array([r[4:] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
                masks = np.array([r[2] for r in rows], dtype=np.int64)
                # a NULL with its bit set was a NaN; a NULL without it was never recorded
                recorded = [
                    j
                    for j, n in enumerate(names)
                    if not np.isnan(values[:, j]).all() or (masks >> BATCH_COLUMNS.index(n) & 1).any()
                ]
                widths = {len(r[3] or b"") for r in rows}
                width = max(widths) // 4
                hist = np.zeros((len(rows), width), np.float32)
                for i, r in enumerate(rows):
                    if r[3]:
                        hist[i, : len(r[3]) // 4] = np.frombuffer(r[3], dtype=np.float32)
                chunk = BatchChunk(
                    steps=np.array([r[0] for r in rows], dtype=np.int64),
                    epochs=np.array([r[1] for r in rows], dtype=np.int64),
                    values=values[:, recorded],
                    class_hist=hist,
                    columns=tuple(names[j] for j in recorded),
                )
                executemany(conn, insert, chunk_rows(run_id, chunk))
                converted += len(rows)
        conn.execute(text("DROP TABLE batchstat"))
    log.info("database upgraded: %d batch rows moved from batchstat into statchunk", converted)
