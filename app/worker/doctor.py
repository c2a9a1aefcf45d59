"""Doctor mode on the server: a doctored run that raises a warning is stopped, its advice applied and the
child queued (itself doctored), and so on until a run finishes healthy, the advice runs out or the lineage
has made its attempts. The step itself is trainer.doctor.prescribe; this module moves runs along it.

Every transition is a conditional UPDATE on `doctor_state` committed with its effect (the stop, or the
child's INSERT), so two servers treating the same database never stop or treat one run twice.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from app.storage.crud import advice_child
from app.storage.models import FINISHED_STATUSES, Run, RunWarning
from trainer import Advice, CollapseWarning
from trainer.config import ConfigError
from trainer.doctor import ACTIONABLE, prescribe

log = logging.getLogger(__name__)
WATCHING, STOPPING, DONE = "watching", "stopping", "done"


def treat_runs(engine: Engine) -> int:
    """One pass: stop the doctored runs that warned, conclude the finished ones. How many runs it moved."""
    moved = 0
    with Session(engine) as session:
        moved += _stop_warned(session)
        finished = session.exec(
            select(Run.id, Run.doctor_state).where(
                col(Run.doctor_state).in_([WATCHING, STOPPING]), col(Run.status).in_(FINISHED_STATUSES)
            )
        ).all()
        for run_id, state in finished:
            try:
                moved += _conclude(session, int(run_id), str(state))
            except Exception:
                session.rollback()
                log.exception("the doctor could not conclude run %s", run_id)
    return moved


def _stop_warned(session: Session) -> int:
    """Ask every running doctored run that raised an actionable warning to stop."""
    warned = select(RunWarning.run_id).where(col(RunWarning.severity).in_(ACTIONABLE))
    result = session.exec(
        update(Run)
        .where(
            col(Run.doctor_state) == WATCHING,
            col(Run.status).in_(["queued", "running"]),
            col(Run.id).in_(warned),
        )
        .values(doctor_state=STOPPING, cancel_requested=True)
    )
    session.commit()
    return int(result.rowcount or 0)


def _conclude(session: Session, run_id: int, state: str) -> int:
    """Decide what follows a finished doctored run and record it with the child, if any, in one commit."""
    run = session.get(Run, run_id)
    if run is None:
        return 0
    outcome, child = _decide(session, run, state)
    claimed = session.exec(
        update(Run).where(col(Run.id) == run_id, col(Run.doctor_state) == state).values(doctor_state=DONE)
    )
    if not claimed.rowcount:  # another server concluded it meanwhile
        session.rollback()
        return 0
    if child is not None:
        session.add(child)
        session.flush()
        outcome = f"{outcome}: run #{child.id}"
    session.exec(update(Run).where(col(Run.id) == run_id).values(doctor_outcome=outcome))
    session.commit()
    log.info("doctor: run %s %s", run_id, outcome)
    return 1


def _decide(session: Session, run: Run, state: str) -> tuple[str, Run | None]:
    """(the outcome to record, the next attempt to queue or None)."""
    rows = session.exec(select(RunWarning).where(RunWarning.run_id == run.id).order_by(col(RunWarning.id)))
    warnings = [_record(w) for w in rows.scalars()]
    if run.status == "cancelled" and state == WATCHING:
        return "cancelled before any warning: the doctor stops here", None
    if run.status == "failed" and not any(w.severity in ACTIONABLE for w in warnings):
        return f"failed ({run.error or 'no reason given'}): the doctor stops here", None
    step = prescribe(run.config, warnings, _lineage_configs(session, run))
    attempt, allowed = run.doctor_attempt or 1, run.doctor_max or 1
    if step.overrides is None:
        return step.reason, None
    if attempt >= allowed:
        kind = step.warning.kind if step.warning else "warning"
        return f"{allowed} attempts made, still {kind}: the doctor stops", None
    try:
        child = advice_child(run, step.overrides)
    except ConfigError as exc:
        return f"the advice does not apply ({exc}): the doctor stops", None
    child.doctor_max, child.doctor_attempt, child.doctor_state = allowed, attempt + 1, WATCHING
    return f"{step.reason} -> queued attempt {attempt + 1}", child


def _record(row: RunWarning) -> CollapseWarning:
    advice = Advice(row.advice.get("message", ""), dict(row.advice.get("overrides") or {})) if row.advice else None
    return CollapseWarning(
        kind=row.kind, severity=row.severity, step=row.step, message=row.message, evidence=dict(row.evidence),
        advice=advice,
    )  # fmt: skip


def _lineage_configs(session: Session, run: Run) -> list[dict[str, Any]]:
    """The effective configs of the doctored runs above this one (its parents, up to the first attempt)."""
    configs, parent_id = [], run.parent_id
    for _ in range(run.doctor_attempt or 1):
        if parent_id is None:
            break
        parent = session.get(Run, parent_id)
        if parent is None or parent.doctor_attempt is None:
            break
        configs.append(dict(parent.config))
        parent_id = parent.parent_id
    return configs
