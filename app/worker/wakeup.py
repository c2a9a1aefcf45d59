"""Wake-ups on PostgreSQL: a worker LISTENs, on a connection of its own, for the notifications that the
database's trigger (app/storage/notify.py) sends when a run is queued or asked to stop.

A hint, never the truth: a worker still polls every `poll_seconds` (and its heartbeat every 0.25 s), so a lost
notification, a dropped listening connection or SQLite (no LISTEN/NOTIFY: polling alone) costs latency, never
a run. The connection is opened before the first claim, so a run queued between a claim that found nothing and
the wait that follows is heard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from app.storage.notify import channel_for

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 5.0  # after a failed LISTEN connection, poll only for this long before trying again
STOP_CHECK_SECONDS = 0.25  # a stop flag that cannot interrupt the wait is looked at this often
# the LISTEN connection only ever reads: without keepalives a path that died silently (a cable pulled, a NAT
# that forgot it) would look like a quiet channel for good; with them it breaks within ~25 s and is reopened
LISTEN_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class StopFlag(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Wakeups:
    """One LISTEN connection of one worker process, used by one thread at a time: the idle worker waits on it
    for a queued run, its heartbeat for its run's cancel. `interrupt()` ends a wait from another thread."""

    def __init__(self, engine: Engine, *, enabled: bool = True) -> None:
        self.engine = engine
        self.enabled = enabled and engine.dialect.name == "postgresql"
        self.channel: str | None = None
        self._conn: Any = None
        self._retry_at = 0.0
        self._pipe = os.pipe() if self.enabled else None
        if self._pipe is not None:
            os.set_blocking(self._pipe[0], False)
            self._connect()

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        if time.monotonic() < self._retry_at:
            return None
        try:
            args, params = self.engine.dialect.create_connect_args(self.engine.url)
            conn = psycopg.connect(*args, **{"connect_timeout": 5, **params, **LISTEN_KEEPALIVE, "autocommit": True})
            schema = conn.execute("SELECT current_schema()").fetchone()
            self.channel = channel_for(str(schema[0] if schema else "public"))
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except Exception as exc:  # polling goes on; LISTEN is tried again later
            log.warning("no NOTIFY wake-ups for %.0f s (polling meanwhile): %s", RECONNECT_SECONDS, exc)
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            return None
        self._conn = conn
        return conn

    def _drop(self, exc: BaseException) -> None:
        log.warning("the LISTEN connection broke (polling meanwhile): %s", exc)
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn, self._retry_at = None, time.monotonic() + RECONNECT_SECONDS

    def wait(self, timeout: float, *, stop: StopFlag, want: Callable[[str], bool]) -> bool:
        """Wait up to `timeout` s; returns True as soon as a notification whose payload `want` accepts arrives,
        False at the timeout, when `stop` is set or after `interrupt()`."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            conn = self._conn or (self._connect() if self._pipe is not None else None)
            if conn is None or self._pipe is None:
                stop.wait(left)
                return False
            try:
                ready, _, _ = select.select([conn.fileno(), self._pipe[0]], [], [], min(left, STOP_CHECK_SECONDS))
                if self._pipe[0] in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._pipe[0], 4096)
                    return False
                # every pending notification read, not just up to the first wanted one: none is left behind
                if ready and any([want(n.payload) for n in conn.notifies(timeout=0)]):
                    return True
            except Exception as exc:  # a dropped connection reads as ready, then fails: poll, reconnect later
                self._drop(exc)
        return False

    def interrupt(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe[1], b"x")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
