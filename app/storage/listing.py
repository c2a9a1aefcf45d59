"""The runs list: search, filter, sort and page in the database, each run with its last evaluation.

Sorting happens in SQL so that a page is the right slice of the whole list. A final validation metric is
the run's last evaluation (the same one `run_public` calls `final_eval`), read by a correlated subquery; a
metric stored as "NaN"/"Infinity" sorts with the runs that have none, after every number, either way.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Text, case, cast, func, or_
from sqlmodel import Session, col, select

from app.storage.models import SUMMARY_COLUMNS, EvalStat, EvalSummary, Run, RunsPage, RunSummary, utcnow
from app.storage.values import NONFINITE_NAMES, split_nonfinite

RunSort = Literal[
    "created", "name", "preset", "status", "steps", "duration", "warnings",
    "val_loss", "accuracy", "ece", "kl", "entropy", "onehot", "top_share",
]  # fmt: skip
SORT_KEYS: tuple[str, ...] = RunSort.__args__  # type: ignore[attr-defined]
# which evaluation metric a sort key reads (val_loss: soft CE against the raw targets, the same loss for
# every run whatever its regularizers), and which latest-batch statistic
EVAL_SORTS = {"val_loss": "soft_ce", "accuracy": "accuracy", "ece": "ece", "kl": "kl"}
LATEST_SORTS = {"entropy": "entropy_mean", "onehot": "onehot_frac", "top_share": "hist_top_share"}


def _last_eval() -> Any:
    """The run's last evaluation as `run_public` picks it: the latest step, then the latest id."""
    return (
        select(EvalStat.id)
        .where(EvalStat.run_id == Run.id)
        .order_by(col(EvalStat.step).desc(), col(EvalStat.id).desc())
        .limit(1)
        .correlate(Run)
    )


def _finite(element: Any) -> ColumnElement[Any]:
    """A JSON number as a float; NULL for a non-finite one stored by name (SQLite would cast "NaN" to 0)."""
    return case((element.as_string().in_(NONFINITE_NAMES), None), else_=element.as_float())


def _sort_column(sort: str) -> ColumnElement[Any]:
    if sort in EVAL_SORTS:
        metric = _finite(EvalStat.__table__.c.metrics[EVAL_SORTS[sort]])
        return select(metric).where(col(EvalStat.id) == _last_eval().scalar_subquery()).scalar_subquery()
    if sort in LATEST_SORTS:
        return _finite(Run.__table__.c.latest[LATEST_SORTS[sort]])
    if sort == "name":
        return func.lower(col(Run.name))
    columns: dict[str, Any] = {
        "created": Run.id,
        "preset": Run.preset,
        "status": Run.status,
        "steps": Run.steps,
        "duration": Run.duration_s,  # a running run has none yet: it sorts with the queued ones
        "warnings": Run.warning_count,
    }
    return col(columns[sort])


def _tag_text(tag: str) -> str:
    """How `tag` appears inside the stored JSON list: the same serializer wrote it, quotes included, so a
    tag never matches a part of a longer one."""
    return json.dumps(tag)


def list_runs(
    *,
    session: Session,
    status: str | None = None,
    q: str | None = None,
    tag: str | None = None,
    sort: str = "created",
    order: Literal["asc", "desc"] = "desc",
    limit: int = 50,
    offset: int = 0,
) -> RunsPage:
    """One page of runs; `total` counts every run the filters keep. `q` is a case-insensitive part of the
    name, a tag or the notes; `tag` one exact tag. Ties (and runs without the sorted value, always last)
    are newest first, so pages never overlap."""
    filters: list[Any] = []
    if status:
        filters.append(Run.status == status)
    if q:
        filters.append(
            or_(
                col(Run.name).icontains(q, autoescape=True),
                col(Run.notes).icontains(q, autoescape=True),
                cast(col(Run.tags), Text).icontains(q, autoescape=True),
            )
        )
    if tag:
        filters.append(cast(col(Run.tags), Text).contains(_tag_text(tag), autoescape=True))
    key = _sort_column(sort)
    ordering = (key.asc() if order == "asc" else key.desc()).nulls_last()
    query = select(Run, _last_eval().scalar_subquery()).where(*filters)
    rows = session.exec(query.order_by(ordering, col(Run.id).desc()).offset(offset).limit(limit)).all()
    evals = {e.id: e for e in session.exec(select(EvalStat).where(col(EvalStat.id).in_([i for _, i in rows if i])))}
    total = session.exec(select(func.count()).select_from(Run).where(*filters)).one()
    return RunsPage(items=[run_summary(run, evals.get(eval_id)) for run, eval_id in rows], total=total)


def eval_summary(row: EvalStat) -> EvalSummary:
    metrics, nonfinite = split_nonfinite(row.metrics)
    return EvalSummary(step=row.step, epoch=row.epoch, metrics=metrics, nonfinite=nonfinite)


def run_summary(run: Run, last_eval: EvalStat | None = None) -> RunSummary:
    latest = run.latest or {}
    return RunSummary.model_validate(
        run,
        update={
            "latest": {k: latest.get(k) for k in SUMMARY_COLUMNS},
            "tags": run.tags or [],
            "duration_s": run.duration_s if run.duration_s is not None else elapsed(run),
            "final_eval": eval_summary(last_eval) if last_eval is not None else None,
        },
    )


def elapsed(run: Run) -> float | None:
    """Seconds from start to finish, or to now while it runs; None before it starts."""
    if run.started_at is None:
        return None
    end: datetime = run.finished_at or utcnow()
    return max(0.0, (end - run.started_at).total_seconds())
