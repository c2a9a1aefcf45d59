"""GET /api/health: the app answers and its database is reachable."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import SessionDep
from app.models import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def read_health(session: SessionDep) -> HealthPublic:
    session.connection().execute(text("SELECT 1"))
    return HealthPublic(status="ok", database=session.get_bind().dialect.name)
