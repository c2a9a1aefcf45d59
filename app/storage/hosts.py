"""`WorkerHost` rows: each process that runs workers reports itself every few seconds on the database's clock, so
a server sees the workers of machines that have no HTTP server of their own."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from app.storage.clock import db_now
from app.storage.models import WorkerHost, WorkerHostPublic

FORGET_AFTER_SECONDS = 3600.0  # a host silent this long (a machine switched off) is no longer listed


def report_host(
    conn: Connection,
    *,
    host: str,
    pid: int,
    role: str,
    configured: int,
    alive: int,
    restarts: int,
    last_exit: str | None,
) -> None:
    """Create or refresh this process's row (one writer per row: an UPDATE, else the first INSERT), and drop the
    rows of processes silent for `FORGET_AFTER_SECONDS` (each restart of a killed host leaves one behind)."""
    values = {
        "role": role,
        "workers_configured": configured,
        "workers_alive": alive,
        "restarts": restarts,
        "last_exit": last_exit,
        "updated_at": db_now(conn),
    }
    mine = (WorkerHost.host == host, WorkerHost.pid == pid)
    if not conn.execute(update(WorkerHost).where(*mine).values(**values)).rowcount:
        conn.execute(insert(WorkerHost).values(host=host, pid=pid, started_at=db_now(conn), **values))
    conn.execute(delete(WorkerHost).where(WorkerHost.updated_at < db_now(conn, -FORGET_AFTER_SECONDS)))


def forget_host(conn: Connection, *, host: str, pid: int) -> None:
    """A process that stops cleanly takes its row away: only hosts that died unannounced are listed stale."""
    conn.execute(delete(WorkerHost).where(WorkerHost.host == host, WorkerHost.pid == pid))


def recent_hosts(
    conn: Connection, *, stale_after_seconds: float, forget_after_seconds: float = FORGET_AFTER_SECONDS
) -> list[WorkerHostPublic]:
    """Every host that reported within `forget_after_seconds`, by name; `stale` past `stale_after_seconds`,
    both on the database's clock."""
    now = db_now(conn).label("now")
    rows = conn.execute(
        select(WorkerHost.__table__, now)
        .where(WorkerHost.updated_at >= db_now(conn, -forget_after_seconds))
        .order_by(WorkerHost.host, WorkerHost.pid)
    ).all()
    hosts = []
    for row in rows:
        since = max(0.0, (row.now - row.updated_at).total_seconds()) if row.updated_at else float("inf")
        fields = {
            k: getattr(row, k) for k in WorkerHostPublic.model_fields if k not in ("seconds_since_report", "stale")
        }
        hosts.append(
            WorkerHostPublic(**fields, seconds_since_report=round(since, 3), stale=since > stale_after_seconds)
        )
    return hosts
