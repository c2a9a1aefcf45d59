"""Shared fixtures: settings on a temporary SQLite file, the app, a TestClient, the engine."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from app.core.config import Settings
from app.main import create_app
from app.storage.engine import init_db, make_engine

LOCAL = "http://127.0.0.1"  # the server answers to its loopback names only (app/security.py)
PG_URL = os.environ.get("COLLAPSEWATCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def client_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the client library keeps a live run's records until the server has them: the test's own
    folder, never the user's ~/.cache (a subprocess started by a test inherits it)."""
    spool = tmp_path / "client-spool"
    monkeypatch.setenv("COLLAPSEWATCH_SPOOL", str(spool))
    return spool


@pytest.fixture(autouse=True)
def fresh_worker_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages read the header's worker count afresh in tests (a server keeps it up to 2 s)."""
    monkeypatch.setattr("app.pages.rendering.HEADER_SECONDS", 0.0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'collapsewatch.db'}",
        data_dir=tmp_path / "data",
        workers=0,
        heartbeat_seconds=0.2,
        stale_after_seconds=1.0,
        reap_interval_seconds=0.2,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=LOCAL) as test_client:  # runs the lifespan: the server's own stale-run reaper
        yield test_client


@pytest.fixture
def engine(app: FastAPI) -> Engine:
    return app.state.engine


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of the test PostgreSQL database whose tables live in a private schema (dropped after)."""
    schema = f"cw_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 2})
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def pg_engines(pg_url: str) -> Iterator[list[Engine]]:
    """Four engines (four workers' pools) on the private PostgreSQL schema, its tables created."""
    engines = [make_engine(pg_url) for _ in range(4)]
    try:
        init_db(engines[0])
        yield engines
    finally:
        for engine in engines:
            engine.dispose()
