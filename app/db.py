"""Engines and schema: SQLite tuned for one writer per process and many readers, or PostgreSQL.

`init_db` creates missing tables and adds missing columns, so a database written by an older
version keeps its runs. Nothing here builds an engine at import time.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import Column
from sqlmodel import SQLModel

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
    from app import models  # noqa: F401  (registers the tables on SQLModel.metadata)

    SQLModel.metadata.create_all(engine)
    added: list[str] = []
    inspector = inspect(engine)
    with engine.begin() as conn:
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
    if added:
        log.info("database upgraded: added columns %s", ", ".join(added))
    return added
