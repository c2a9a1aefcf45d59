"""Doctor mode on the run page: the lineage GET /api/runs/{id}/doctor returns, with each attempt's changes
written out field by field (before -> after) from the two runs' effective configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from app.errors import NotFound
from app.pages.config_form import config_differences, display_value
from app.storage import crud
from app.storage.doctor import DoctorAttempt, DoctorPublic, doctor_lineage
from app.storage.models import RunPublic


@dataclass(frozen=True)
class AttemptView:
    attempt: DoctorAttempt
    changes: list[tuple[str, str, str]]  # (field, before, after) against the attempt before; empty for the first


@dataclass(frozen=True)
class DoctorTree:
    lineage: DoctorPublic
    attempts: list[AttemptView]


def _shown(value: object) -> str:
    return display_value(value) or "none"


def doctor_tree(session: Session, run: RunPublic) -> DoctorTree | None:
    """The doctor's lineage that `run` belongs to, or None for a run queued without doctor mode."""
    if run.doctor_attempt is None:
        return None
    lineage = doctor_lineage(session=session, run_id=run.id)
    if lineage is None:
        return None
    views: list[AttemptView] = []
    before: dict[str, Any] | None = None
    for attempt in lineage.attempts:
        try:
            config = crud.get_run(session=session, run_id=attempt.run_id).config
        except NotFound:  # deleted since the lineage was read
            config = None
        changes = []
        if before is not None and config is not None:
            changes = [(k, _shown(old), _shown(new)) for k, (old, new) in config_differences([before, config])]
        elif attempt.changed:  # the run before it is gone: the API's own record of what changed
            changes = [(k, "?", _shown(v)) for k, v in attempt.changed.items()]
        views.append(AttemptView(attempt, changes))
        before = config
    return DoctorTree(lineage, views)
