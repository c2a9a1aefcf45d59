"""GET /api/health: the app answers, its database is reachable, and how its workers are doing."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import SessionDep, SettingsDep
from app.storage.models import HealthPublic
from app.worker.claim import count_busy_workers
from app.worker.pool import PoolStatus, WorkerPool

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def read_health(request: Request, session: SessionDep, settings: SettingsDep) -> HealthPublic:
    # workers on other machines report through the database only: those with a recent heartbeat
    busy = count_busy_workers(session.connection(), stale_after_seconds=settings.stale_after_seconds)
    pool: WorkerPool | None = getattr(request.app.state, "worker_pool", None)
    workers = pool.status() if pool is not None else PoolStatus(configured=0, alive=0, restarts=0, last_exit=None)
    return HealthPublic(
        status="ok" if workers.alive >= workers.configured else "degraded",
        database=session.get_bind().dialect.name,
        workers_configured=workers.configured,
        workers_alive=workers.alive,
        worker_restarts=workers.restarts,
        last_worker_exit=workers.last_exit,
        busy_workers=busy,
    )
