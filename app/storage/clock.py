"""The database's clock as a SQL expression: heartbeats, the stale check and worker hosts' reports all read
it, so hosts whose own clocks disagree still compare times on one clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Float, bindparam, func, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from app.storage.models import UTCDateTime


def db_now(bind: Engine | Connection, offset_seconds: float = 0.0) -> ColumnElement[datetime]:
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
