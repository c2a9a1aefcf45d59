"""Which sweep and trial a run belongs to: what the run header and the runs list show beside a trial's run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from app.storage.models import Run, Sweep


@dataclass(frozen=True)
class TrialLink:
    sweep_id: int
    sweep_name: str
    trial_number: int


def trial_links(*, session: Session, run_ids: Iterable[int]) -> dict[int, TrialLink]:
    """run id -> its sweep and trial number, for the runs among `run_ids` that are a sweep's trials."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = session.exec(
        select(Run.id, Run.sweep_id, Run.trial_number, Sweep.name)
        .join(Sweep, col(Sweep.id) == col(Run.sweep_id))
        .where(col(Run.id).in_(ids))
    ).all()
    return {int(run_id): TrialLink(int(sweep_id), name, int(number or 0)) for run_id, sweep_id, number, name in rows}


def trial_link(*, session: Session, run_id: int) -> TrialLink | None:
    return trial_links(session=session, run_ids=[run_id]).get(run_id)
