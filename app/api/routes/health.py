"""GET /api/health: the app answers, its database is reachable, and how the workers of every host are doing."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import SessionDep, SettingsDep
from app.security import AUTHORISED
from app.storage.models import HealthPublic
from app.worker.claim import count_busy_workers
from app.worker.hosts import PoolStatus, workers_overview
from app.worker.pool import WorkerPool

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def read_health(request: Request, session: SessionDep, settings: SettingsDep) -> HealthPublic:
    # workers on other machines report through the database only: their hosts' reports, their heartbeats
    conn = session.connection()
    busy = count_busy_workers(conn, stale_after_seconds=settings.stale_after_seconds)
    pool: WorkerPool | None = getattr(request.app.state, "worker_pool", None)
    mine = pool.status() if pool is not None else None
    own = getattr(pool, "identity", None)
    overview, hosts = workers_overview(conn, mine, own, stale_after_seconds=settings.stale_after_seconds)
    workers = mine or PoolStatus(configured=0, alive=0, restarts=0, last_exit=None)
    # a load balancer probing this server asks about this server: another host a worker short is `cluster`'s
    authorised = bool(getattr(request.state, AUTHORISED, True))
    return HealthPublic(
        status="degraded" if workers.alive < workers.configured else "ok",
        cluster="degraded" if overview is not None and overview.degraded else "ok",
        database=session.get_bind().dialect.name,
        workers_configured=workers.configured,
        workers_alive=workers.alive,
        worker_restarts=workers.restarts,
        last_worker_exit=workers.last_exit,
        busy_workers=busy,
        hosts=hosts if authorised else [],  # with a token, host names and pids only for those who have it
    )
