"""One driver per sweep: a server drives a sweep only while it holds the sweep's lease, taken and renewed
by one conditional UPDATE on the database's clock, so two servers on one database never drive it at once
and a server that died hands its sweeps over once its lease runs out."""

from __future__ import annotations

import os
import socket
import uuid

from sqlalchemy import Engine, or_, select, update

from app.storage.models import Sweep
from app.worker.claim import db_now

LEASE_SECONDS = 30.0  # far longer than one pass takes; a lost server's sweeps wait this long at most


def driver_name() -> str:
    """A name for this server's driver, unique even among servers of one process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def sweeps_to_drive(engine: Engine) -> list[int]:
    """Sweeps queued or running, and cancelled ones whose trials' ends Optuna has not all been told."""
    unsettled = or_(Sweep.status.in_(("queued", "running")), (Sweep.status == "cancelled") & ~Sweep.settled)
    with engine.connect() as conn:
        return [int(i) for i in conn.execute(select(Sweep.id).where(unsettled).order_by(Sweep.id)).scalars()]


def take_lease(engine: Engine, sweep_id: int, *, driver: str) -> bool:
    """Take or renew the sweep's lease for `driver`; False while another driver's lease holds."""
    with engine.begin() as conn:
        taken = conn.execute(
            update(Sweep)
            .where(
                Sweep.id == sweep_id,
                or_(Sweep.driver.is_(None), Sweep.driver == driver, Sweep.driver_until < db_now(conn)),
            )
            .values(driver=driver, driver_until=db_now(conn, LEASE_SECONDS))
        )
    return bool(taken.rowcount)
