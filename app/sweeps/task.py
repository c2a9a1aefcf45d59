"""The web server's periodic sweep pass (started by app/main.py's lifespan beside the reaper)."""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import Engine

from app.budgets import Limits
from app.core.config import Settings

log = logging.getLogger(__name__)
DRIVE_INTERVAL_SECONDS = 1.0  # how soon a finished trial is told and the next one queued


async def drive_periodically(engine: Engine, settings: Settings) -> None:
    """Drive the sweeps once a second, in a thread (Optuna and the database block); Optuna's storage is
    built by the first pass that finds a sweep, and closed when the server stops."""
    from app.sweeps.driver import drive_sweeps  # Optuna is imported by the first pass, not by the app
    from app.sweeps.lease import driver_name
    from app.sweeps.storage import optuna_storage, release_storage

    driver, limits = driver_name(), Limits.from_settings(settings)

    def one_pass() -> None:
        drive_sweeps(engine, lambda: optuna_storage(settings.database_url), driver=driver, limits=limits)

    try:
        while True:
            try:
                await anyio.to_thread.run_sync(one_pass)
            except Exception:
                log.exception("the sweep driver's pass failed")
            await anyio.sleep(DRIVE_INTERVAL_SECONDS)
    finally:
        release_storage(settings.database_url)
