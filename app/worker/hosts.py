"""Worker health across hosts: every process that runs workers (`serve` with its pool, `worker` on any machine)
reports them into `WorkerHost` every few seconds, and a server folds the other hosts' reports into /api/health
and the page header beside its own pool's live status."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from app.storage.hosts import forget_host, recent_hosts, report_host
from app.storage.models import WorkerHostPublic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    configured: int
    alive: int
    restarts: int  # dead workers replaced since the pool started
    last_exit: str | None  # the latest death, for /api/health


def report_interval(stale_after_seconds: float) -> float:
    """Every 5 s, or often enough that a live host reports three times within the stale limit."""
    return max(0.1, min(5.0, stale_after_seconds / 3))


class HostReporter:
    """A thread that writes `status()` into this process's `WorkerHost` row every `interval` s and removes the
    row when stopped. It never stops the workers: a failed report is logged and tried again."""

    def __init__(
        self, engine: Engine, *, status: Callable[[], PoolStatus], role: str, interval: float, host: str | None = None
    ) -> None:
        self.engine, self.status, self.role, self.interval = engine, status, role, interval
        self.host, self.pid = host or socket.gethostname(), os.getpid()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collapsewatch-host-report", daemon=True)
        self._failing = False

    def start(self) -> HostReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self.engine.begin() as conn:
                forget_host(conn, host=self.host, pid=self.pid)
        except Exception as exc:  # the row goes stale instead, and is forgotten after an hour
            log.warning("could not remove this host's report: %s", exc)

    def report(self) -> None:
        status = self.status()
        with self.engine.begin() as conn:
            report_host(
                conn,
                host=self.host,
                pid=self.pid,
                role=self.role,
                configured=status.configured,
                alive=status.alive,
                restarts=status.restarts,
                last_exit=status.last_exit,
            )

    def _loop(self) -> None:
        while True:
            try:
                self.report()
                if self._failing:
                    log.info("reporting this host's workers again")
                self._failing = False
            except Exception as exc:  # logged once per outage, not every few seconds
                if not self._failing:
                    log.warning("could not report this host's workers (trying again): %s", exc)
                self._failing = True
            if self._done.wait(self.interval):
                return


@dataclasses.dataclass(frozen=True)
class WorkersOverview:
    """What the page header shows: this server's pool (live) plus every other host that reported recently."""

    configured: int
    alive: int
    restarts: int
    last_exit: str | None
    hosts: int  # hosts with a recent report, this one included when it runs workers
    silent: int  # hosts whose last report is older than the stale limit
    own: bool = True  # this server runs a pool of its own

    @property
    def degraded(self) -> bool:
        return self.alive < self.configured

    @property
    def where(self) -> str:
        """'of this server', or 'on 3 hosts' once other hosts report workers too."""
        if self.own and self.hosts == 1:
            return "of this server"
        return f"on {self.hosts} host{'s' if self.hosts != 1 else ''}"


def workers_overview(
    conn: Connection, pool: PoolStatus | None, own: tuple[str, int] | None, *, stale_after_seconds: float
) -> tuple[WorkersOverview | None, list[WorkerHostPublic]]:
    """The overview (None when no worker runs here or reports from elsewhere) and every recent host. `own` is
    this server's (host, pid): its row is replaced by `pool`, which is live rather than a few seconds old."""
    hosts = recent_hosts(conn, stale_after_seconds=stale_after_seconds)
    others = [h for h in hosts if (h.host, h.pid) != own]
    fresh = [h for h in others if not h.stale]
    if pool is None and not others:
        return None, hosts
    mine = pool or PoolStatus(0, 0, 0, None)
    exits = [mine.last_exit, *(h.last_exit for h in fresh)]
    overview = WorkersOverview(
        configured=mine.configured + sum(h.workers_configured for h in fresh),
        alive=mine.alive + sum(h.workers_alive for h in fresh),
        restarts=mine.restarts + sum(h.restarts for h in fresh),
        last_exit=next((e for e in exits if e), None),
        hosts=len(fresh) + (1 if pool is not None else 0),
        silent=len(others) - len(fresh),
        own=pool is not None,
    )
    return overview, hosts


def header_overview(engine: Engine, pool: Any, *, stale_after_seconds: float) -> WorkersOverview | None:
    """The page header's overview for a server whose own pool is `pool` (a WorkerPool, or None)."""
    status, own = (pool.status(), getattr(pool, "identity", None)) if pool is not None else (None, None)
    with engine.connect() as conn:
        return workers_overview(conn, status, own, stale_after_seconds=stale_after_seconds)[0]
