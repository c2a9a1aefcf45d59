"""Optuna's RDB storage in the project's own database, built lazily, once per process and database URL.

PostgreSQL: Optuna's tables live in their own schema (created if absent): `optuna`, or `<schema>_optuna`
when the project's URL puts its own tables in `<schema>` (options=-csearch_path=<schema>), so two
installations sharing one server keep their studies apart. SQLite has no schemas and Optuna no table
prefix: its tables (studies, trials, trial_params, ..., version_info, alembic_version) share the file with
ours, whose names differ (tests/api/test_sweeps.py checks that they never collide).
Its pool is bounded: only the sweep driver, one thread per server, talks to it.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import unquote

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import create_engine, make_url, text

from app.storage.engine import normalize_url

log = logging.getLogger(__name__)
POOL = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 30}
_storages: dict[str, RDBStorage] = {}
_lock = threading.Lock()


def optuna_schema(database_url: str) -> str | None:
    """The PostgreSQL schema of Optuna's tables (None on SQLite)."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "postgresql":
        return None
    options = unquote(str(url.query.get("options", "")))
    for option in options.split():
        if option.startswith("-csearch_path="):
            schema = option.split("=", 1)[1].split(",")[0].strip().strip('"')
            if schema and schema != "public":
                return f"{schema}_optuna"
    return "optuna"


def optuna_storage(database_url: str) -> RDBStorage:
    """The storage for this database, made (and its tables created) on the first call in this process."""
    with _lock:
        storage = _storages.get(database_url)
        if storage is None:
            storage = _storages[database_url] = _build(database_url)
        return storage


def release_storage(database_url: str) -> None:
    """Close this process's storage for the URL, if it was ever built (the server's shutdown)."""
    with _lock:
        storage = _storages.pop(database_url, None)
    if storage is not None:
        storage.remove_session()
        storage.engine.dispose()


def _build(database_url: str) -> RDBStorage:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown the server's log
    url = make_url(normalize_url(database_url))
    schema = optuna_schema(database_url)
    if schema is None:
        # the sqlite3 module's lock timeout: the driver waits for a worker's write, as the sink does
        kwargs = {"connect_args": {"timeout": 30}, **POOL}
        return RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs)
    admin = create_engine(url, pool_size=1, max_overflow=0)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        admin.dispose()
    plain = url.difference_update_query(["options"])
    kwargs = {"connect_args": {"options": f"-csearch_path={schema}"}, "pool_pre_ping": True, **POOL}
    log.info("Optuna's tables: schema %s", schema)
    return RDBStorage(plain.render_as_string(hide_password=False), engine_kwargs=kwargs)
