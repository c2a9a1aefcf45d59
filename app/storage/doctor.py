"""Doctor mode's lineage as the API and the run page show it: every attempt from the first, what it
changed from the one before, why, and how it ended."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session, SQLModel, col

from app.storage.crud import get_run
from app.storage.models import Run, RunWarning


class DoctorAttempt(SQLModel):
    attempt: int
    run_id: int
    name: str
    status: str
    changed: dict[str, Any]  # the fields whose value differs from the attempt before (empty for the first)
    warnings: list[str]  # "severity kind from step N", in the order raised
    outcome: str | None  # what the doctor did after it; null while it runs or waits


class DoctorPublic(SQLModel):
    run_id: int
    max_attempts: int
    attempts: list[DoctorAttempt]
    state: str  # "in progress", "healthy", "stopped"
    result: str  # one line: where the lineage stands


def doctor_lineage(*, session: Session, run_id: int) -> DoctorPublic | None:
    """The lineage `run_id` belongs to, first attempt first; None when the run is not doctored."""
    run = get_run(session=session, run_id=run_id)
    if run.doctor_attempt is None:
        return None
    while run.parent_id is not None and (run.doctor_attempt or 1) > 1:
        parent = session.get(Run, run.parent_id)
        if parent is None or parent.doctor_attempt is None:
            break
        run = parent
    chain = [run]
    while True:
        nxt = session.exec(
            select(Run)
            .where(col(Run.parent_id) == chain[-1].id, col(Run.doctor_attempt) == (chain[-1].doctor_attempt or 0) + 1)
            .order_by(col(Run.id))
        ).scalars().first()  # fmt: skip
        if nxt is None:
            break
        chain.append(nxt)
    attempts = [_attempt(session, r, chain[i - 1] if i else None) for i, r in enumerate(chain)]
    last = chain[-1]
    if last.doctor_state != "done":
        state, result = "in progress", f"attempt {last.doctor_attempt} (run #{last.id}) is {last.status}"
    elif (last.doctor_outcome or "").startswith("healthy"):
        state, result = "healthy", f"run #{last.id} finished healthy after {len(chain)} attempt(s)"
    else:
        state, result = "stopped", f"run #{last.id}: {last.doctor_outcome}"
    return DoctorPublic(
        run_id=run_id, max_attempts=chain[0].doctor_max or 1, attempts=attempts, state=state, result=result
    )


def _attempt(session: Session, run: Run, before: Run | None) -> DoctorAttempt:
    warnings = session.exec(
        select(RunWarning.severity, RunWarning.kind, RunWarning.step)
        .where(RunWarning.run_id == run.id)
        .order_by(col(RunWarning.id))
    ).all()
    changed = {}
    if before is not None:
        changed = {k: v for k, v in run.config.items() if before.config.get(k) != v}
    return DoctorAttempt(
        attempt=run.doctor_attempt or 1,
        run_id=run.id or 0,
        name=run.name,
        status=run.status,
        changed=changed,
        warnings=[f"{sev} {kind} from step {step}" for sev, kind, step in warnings],
        outcome=run.doctor_outcome,
    )
