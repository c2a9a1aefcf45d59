"""What a run page says while nothing is drawn yet: a queued run's place in the queue and who will take
it, a run that is preparing its data, and how long a running run has been going."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlmodel import Session

from app.storage.models import Run, RunPublic, utcnow
from app.worker.hosts import WorkersOverview


@dataclass(frozen=True)
class Waiting:
    position: int | None  # 1 = next to be claimed; None unless queued
    running: int  # runs being trained now, on any worker of this database
    elapsed_s: float | None  # since the run started, while it runs
    preparing: bool  # running, no batch trained yet: making its data and building its model
    message: str | None


def waiting_state(session: Session, run: RunPublic, workers: WorkersOverview | None) -> Waiting:
    running = int(session.execute(select(func.count()).where(Run.status == "running")).scalar_one())
    position = None
    if run.status == "queued":
        ahead = session.execute(select(func.count()).where(Run.status == "queued", Run.id < run.id)).scalar_one()
        position = int(ahead) + 1
    elapsed = (utcnow() - run.started_at).total_seconds() if run.status == "running" and run.started_at else None
    preparing = run.status == "running" and run.steps == 0
    return Waiting(position, running, elapsed, preparing, _message(run, position, running, workers, preparing))


def _message(
    run: RunPublic, position: int | None, running: int, workers: WorkersOverview | None, preparing: bool
) -> str | None:
    if preparing and run.external:
        return f"Waiting for the first statistics from its training loop ({run.worker})."
    if preparing:
        return f"Preparing: making the data and building the model on {run.worker}; the first batch comes next."
    if position is None:
        return None
    place = "next in the queue" if position == 1 else f"number {position} in the queue ({position - 1} ahead)"
    busy = f"{running} run{'s' if running != 1 else ''} training now"
    if workers is None or workers.configured == 0:
        who = "this server runs no workers: a `collapsewatch worker` on another machine will claim it"
    elif workers.alive == 0:
        who = f"no worker {workers.where} is alive ({workers.configured} configured, restarting): it waits"
    else:
        who = f"{workers.alive} of {workers.configured} workers {workers.where} alive"
    return f"Queued: {place}; {busy}; {who}."
