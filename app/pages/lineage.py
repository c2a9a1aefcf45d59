"""Where a run comes from and what came of its advice: its ancestors and children, and for each warning
whether its advice was already applied (to which child) or repeats an earlier warning's."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from app.storage.crud import applied_child
from app.storage.models import Run, RunPublic, WarningPublic

MAX_ANCESTORS = 20  # a lineage deeper than this is cut, with an ellipsis


@dataclass(frozen=True)
class Lineage:
    ancestors: list[tuple[int, str]]  # (id, name), the root first
    cut: bool  # more ancestors than shown
    children: list[tuple[int, str, str]]  # (id, name, status)


@dataclass(frozen=True)
class AdviceState:
    applied_to: int | None  # the child run this advice already made
    same_as: int | None  # an earlier warning of this run with the same changes


def lineage(session: Session, run: RunPublic) -> Lineage:
    ancestors: list[tuple[int, str]] = []
    parent_id, seen = run.parent_id, {run.id}
    while parent_id is not None and parent_id not in seen and len(ancestors) < MAX_ANCESTORS:
        row = session.execute(select(Run.id, Run.name, Run.parent_id).where(Run.id == parent_id)).first()
        if row is None:
            break
        seen.add(row.id)
        ancestors.append((row.id, row.name))
        parent_id = row.parent_id
    children = session.execute(
        select(Run.id, Run.name, Run.status).where(Run.parent_id == run.id).order_by(Run.id)
    ).all()
    return Lineage(
        ancestors[::-1], parent_id is not None and len(ancestors) >= MAX_ANCESTORS, [tuple(c) for c in children]
    )


def advice_states(session: Session, run: RunPublic, warnings: list[WarningPublic]) -> dict[int, AdviceState]:
    states: dict[int, AdviceState] = {}
    first_with: dict[str, int] = {}  # the changes, canonical JSON-ish, -> the first warning offering them
    for w in warnings:
        if w.advice is None or not w.advice.overrides:
            continue
        key = repr(sorted(w.advice.overrides.items()))
        same_as = first_with.setdefault(key, w.id)
        states[w.id] = AdviceState(
            applied_to=applied_child(session, run, w.advice.overrides),
            same_as=None if same_as == w.id else same_as,
        )
    return states
