"""Dependencies shared by API routes and pages: a database session per request, the settings, and
the bounded types of id, step and offset parameters.

They are `async def` on purpose: FastAPI runs a sync dependency in its thread pool, so a sync
session dependency costs a request two extra hand-offs between the event loop and a thread (one
to open, one to close) besides the endpoint's own. On a loaded machine every hand-off waits for a
CPU; creating a Session does no I/O (it connects on first use, inside the endpoint's thread).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Path, Query, Request
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.config import Settings
from app.storage.models import MAX_ID, MAX_STEP


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_session(request: Request) -> AsyncIterator[Session]:
    engine: Engine = request.app.state.engine
    session = Session(engine)
    try:
        yield session
    finally:
        # giving the connection back rolls its transaction back: a local call for SQLite, done here;
        # a round trip for a database server, done in a thread so the event loop never waits on it
        if engine.dialect.name == "sqlite":
            session.close()
        else:
            await anyio.to_thread.run_sync(session.close)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

# Bounded so that no value reaches a query the database cannot take (an id past 2**31 - 1 is an error
# on PostgreSQL, an integer past 2**63 - 1 on SQLite): a 422 with the range instead of a 500.
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="a run's id")]
DatasetId = Annotated[int, Path(ge=1, le=MAX_ID, description="a dataset's id")]
SinceStep = Annotated[int, Query(ge=-1, le=MAX_STEP, description="only batches after this step (-1: all)")]
# no table holds more rows than ids, so an offset past the largest id would only ever read nothing
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
