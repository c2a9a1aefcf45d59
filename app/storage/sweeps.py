"""Sweeps in the database: create, read (each trial with its objective), list, cancel, export.

A trial's objective is read from its run's last `EvalStat`, so the API never opens Optuna's storage; the
driver (app/sweeps/driver.py) reads it the same way before telling Optuna.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from app.budgets import Limits, check_run
from app.errors import Conflict, InputError, NotFound
from app.storage.crud import _refuse_control_characters, trainable_config
from app.storage.models import MAX_ID, SEVERITY_RANK, EvalStat, Run, Sweep, utcnow
from app.storage.sweep_models import (
    DEFAULT_TRIALS,
    OBJECTIVES,
    SweepCreate,
    SweepPublic,
    SweepSummary,
    TrialPublic,
)
from app.sweeps.space import config_value, grid_size, validate_space
from trainer import TrainConfig, from_dict

PRUNED_PREFIX = "pruned: "  # how a pruned trial's run error starts
ACTIVE = ("queued", "running")


# --- create -----------------------------------------------------------------------------------------
def create_sweep(*, session: Session, sweep_in: SweepCreate, limits: Limits | None = None) -> Sweep:
    """Validate the base config, the space and the trial count, and store the sweep queued for the driver."""
    _refuse_control_characters(["body", "name"], sweep_in.name, "a sweep's name")
    base = _base_config(sweep_in, limits)
    space = validate_space(sweep_in.search_space, base, sweep_in.sampler)
    n_trials = sweep_in.n_trials
    if sweep_in.sampler == "grid":
        points = grid_size(space)
        if n_trials is not None and n_trials > points:
            message = f"the grid has {points} points: a grid sweep runs at most that many trials, got {n_trials}"
            raise InputError.at(["body", "n_trials"], message)
        n_trials = n_trials or points
    if limits is not None:  # each range's ends and each choice, one at a time, within the server's budgets
        _check_budgets(base, space, limits)
    direction = OBJECTIVES[sweep_in.objective][1]
    sweep = Sweep(
        name=sweep_in.name or "",
        preset=sweep_in.preset,
        config=base.to_dict(),
        search_space=space,
        sampler=sweep_in.sampler,
        seed=sweep_in.seed,
        n_trials=n_trials or DEFAULT_TRIALS,
        parallelism=sweep_in.parallelism,
        objective=sweep_in.objective,
        direction=direction,
    )
    session.add(sweep)
    session.flush()
    sweep.name = sweep.name or f"sweep #{sweep.id}"
    sweep.study_name = f"collapsewatch-sweep-{sweep.id}"
    session.commit()
    session.refresh(sweep)
    return sweep


def _base_config(sweep_in: SweepCreate, limits: Limits | None) -> TrainConfig:
    data = sweep_in.config.get("data")
    if isinstance(data, dict) and ({"path", "kind"} & set(data)):
        raise InputError.at(["body", "config", "data"], "a sweep trains on the built-in data: no data.kind or path")
    return trainable_config(sweep_in.config, sweep_in.preset, limits)


def _check_budgets(base: TrainConfig, space: dict[str, dict[str, Any]], limits: Limits) -> None:
    from app.sweeps.space import overrides

    for name, spec in space.items():
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            try:
                check_run(from_dict(overrides({name: value}), base=base), limits)
            except InputError as exc:
                msg = f"with {name} = {value!r}: {exc.errors[0]['msg']}"
                raise InputError.at(["body", "search_space", name], msg, "value_error.budget") from exc


# --- read -------------------------------------------------------------------------------------------
def get_sweep(*, session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if 1 <= sweep_id <= MAX_ID else None
    if sweep is None:
        raise NotFound(f"Sweep {sweep_id} not found")
    return sweep


def trial_runs(session: Session, sweep_id: int) -> list[Run]:
    return list(session.exec(select(Run).where(Run.sweep_id == sweep_id).order_by(col(Run.trial_number))).all())


def last_metrics(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each run's last evaluation's metrics (runs without one are left out)."""
    if not run_ids:
        return {}
    last = select(func.max(EvalStat.id)).where(col(EvalStat.run_id).in_(run_ids)).group_by(EvalStat.run_id)
    rows = session.exec(select(EvalStat.run_id, EvalStat.metrics).where(col(EvalStat.id).in_(last))).all()
    return {int(run_id): dict(metrics) for run_id, metrics in rows}


def objective_of(metrics: dict[str, Any] | None, objective: str) -> float | None:
    """The objective's value in these metrics; None when absent or not finite (stored as "NaN")."""
    value = (metrics or {}).get(OBJECTIVES[objective][0])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def collapsed(run: Run) -> bool:
    """A warning or critical collapse warning: the trial is infeasible and never wins."""
    return SEVERITY_RANK.get(run.max_severity or "", 0) >= SEVERITY_RANK["warning"]


def trial_public(sweep: Sweep, run: Run, metrics: dict[str, Any] | None) -> TrialPublic:
    pruned = run.status == "cancelled" and (run.error or "").startswith(PRUNED_PREFIX)
    return TrialPublic(
        number=run.trial_number or 0,
        run_id=run.id or 0,
        name=run.name,
        status="pruned" if pruned else run.status,
        params={name: config_value(run.config, name) for name in sweep.search_space},
        objective=objective_of(metrics, sweep.objective),
        warning_count=run.warning_count,
        max_severity=run.max_severity,
        collapsed=collapsed(run),
        pruned_reason=(run.error or "")[len(PRUNED_PREFIX) :] if pruned else None,
        error=run.error,
        steps=run.steps,
        duration_s=run.duration_s,
    )


def best_trial(trials: list[TrialPublic], direction: str) -> TrialPublic | None:
    """The best objective among completed trials without a collapse warning (ties: the earlier trial)."""
    feasible = [t for t in trials if t.status == "completed" and not t.collapsed and t.objective is not None]
    if not feasible:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(feasible, key=lambda t: (sign * (t.objective or 0.0), t.number))


def _trials(session: Session, sweep: Sweep) -> list[TrialPublic]:
    runs = trial_runs(session, sweep.id or 0)
    metrics = last_metrics(session, [r.id or 0 for r in runs])
    return [trial_public(sweep, run, metrics.get(run.id or 0)) for run in runs]


def _summary(sweep: Sweep, trials: list[TrialPublic]) -> dict[str, Any]:
    best = best_trial(trials, sweep.direction)
    return {
        "trials_started": len(trials),
        "trials_finished": sum(1 for t in trials if t.status not in ACTIVE),
        "best_run_id": best.run_id if best else None,
        "best_objective": best.objective if best else None,
    }


def sweep_public(*, session: Session, sweep: Sweep) -> SweepPublic:
    trials = _trials(session, sweep)
    summary = _summary(sweep, trials)
    best = next((t for t in trials if t.run_id == summary["best_run_id"]), None)
    return SweepPublic.model_validate(sweep, update={**summary, "trials": trials, "best_trial": best})


def list_sweeps(*, session: Session, limit: int = 50, offset: int = 0) -> list[SweepSummary]:
    """A page of sweeps with their trial counts and best: three queries, whatever the number of trials."""
    sweeps = session.exec(select(Sweep).order_by(col(Sweep.id).desc()).offset(offset).limit(limit)).all()
    runs = session.exec(
        select(Run).where(col(Run.sweep_id).in_([s.id for s in sweeps])).order_by(col(Run.trial_number))
    ).all()
    metrics = last_metrics(session, [r.id or 0 for r in runs])
    by_sweep: dict[int, list[Run]] = {}
    for run in runs:
        by_sweep.setdefault(run.sweep_id or 0, []).append(run)
    out = []
    for s in sweeps:
        trials = [trial_public(s, r, metrics.get(r.id or 0)) for r in by_sweep.get(s.id or 0, [])]
        out.append(SweepSummary.model_validate(s, update=_summary(s, trials)))
    return out


# --- cancel -----------------------------------------------------------------------------------------
def cancel_sweep(*, session: Session, sweep_id: int) -> Sweep:
    """Cancel the sweep: its queued trials at once, its running ones asked to stop. Again: the same answer;
    a sweep that already ended otherwise is a 409."""
    sweep = get_sweep(session=session, sweep_id=sweep_id)
    now = utcnow()
    session.exec(
        update(Sweep)
        .where(col(Sweep.id) == sweep_id, col(Sweep.status).in_(ACTIVE))
        .values(status="cancelled", finished_at=now)
    )
    session.commit()
    session.refresh(sweep)
    if sweep.status != "cancelled":
        raise Conflict(f"Sweep {sweep_id} is {sweep.status}: there is nothing left to cancel")
    session.exec(
        update(Run)
        .where(col(Run.sweep_id) == sweep_id, col(Run.status) == "queued")
        .values(status="cancelled", finished_at=now, cancel_requested=True, error="the sweep was cancelled")
    )
    session.exec(
        update(Run).where(col(Run.sweep_id) == sweep_id, col(Run.status) == "running").values(cancel_requested=True)
    )
    session.commit()
    return sweep


# --- export -----------------------------------------------------------------------------------------
def trials_csv(*, session: Session, sweep: Sweep) -> str:
    """One line per trial: number, run, status, objective, each searched field, warnings, pruning, error."""
    out = io.StringIO()
    names = list(sweep.search_space)
    writer = csv.writer(out)
    header = ["number", "run_id", "status", sweep.objective, *names, "warnings", "max_severity", "pruned_reason"]
    writer.writerow([*header, "error"])
    for t in _trials(session, sweep):
        params = [t.params.get(n) for n in names]
        writer.writerow([t.number, t.run_id, t.status, "" if t.objective is None else repr(t.objective), *params,
                         t.warning_count, t.max_severity or "", t.pruned_reason or "", t.error or ""])  # fmt: skip
    return out.getvalue()
