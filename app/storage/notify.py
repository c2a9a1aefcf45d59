"""PostgreSQL NOTIFY when a run is queued or asked to stop, for the workers' wake-ups (app/worker/wakeup.py).

A trigger on `run` sends them, so every way a run gets there (the API and the form, a sweep's next trial, the
doctor's next attempt, another server, a script writing SQL) wakes idle workers at once. The channel is named
after the table's schema: deployments and tests sharing one database do not wake each other. SQLite has no
LISTEN/NOTIFY: its workers poll.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

CHANNEL_PREFIX = "collapsewatch."
QUEUED, CANCEL = "queued:", "cancel:"  # payload prefixes, followed by the run's id
TRIGGER = "collapsewatch_notify_v1"  # a new version gets a new name: an older database is given it at start

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    channel text := left('{CHANNEL_PREFIX}' || TG_TABLE_SCHEMA, 63);
BEGIN
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued') THEN
        PERFORM pg_notify(channel, '{QUEUED}' || NEW.id);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.cancel_requested AND NOT OLD.cancel_requested THEN
        PERFORM pg_notify(channel, '{CANCEL}' || NEW.id);
    END IF;
    RETURN NULL;
END
$$
"""
# plain CREATE TRIGGER (CREATE OR REPLACE TRIGGER needs PostgreSQL 14): its absence is checked under the lock
_TRIGGER = f"""
CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OF status, cancel_requested ON run
FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()
"""


def channel_for(schema: str) -> str:
    """The channel of the tables in `schema` (63 bytes at most, PostgreSQL's identifier length)."""
    return (CHANNEL_PREFIX + schema)[:63]


def install_notify_trigger(engine: Engine) -> bool:
    """Create the trigger on a PostgreSQL database that lacks it; returns whether it was created. Several
    processes starting at once take turns (an advisory lock): CREATE OR REPLACE run concurrently can fail."""
    if engine.dialect.name != "postgresql":
        return False
    present = text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass('run')")
    with engine.connect() as conn:  # a plain read first: every start after the first changes nothing
        if conn.execute(present, {"name": TRIGGER}).first() is not None:
            return False
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": TRIGGER})
        if conn.execute(present, {"name": TRIGGER}).first() is not None:
            return False
        conn.exec_driver_sql(_FUNCTION)
        conn.exec_driver_sql(_TRIGGER)
    return True
