"""The sweep driver: one pass over the sweeps that are not settled, run periodically by the web server.

For each sweep it holds the lease of (lease.py): it tells Optuna how each finished trial ended, reports
each new evaluation of a running trial and prunes it when `CollapsePruner` says so (the run is asked to
stop and ends cancelled, "pruned: <reason>"), asks new trials while fewer than `parallelism` are queued or
running and fewer than `n_trials` exist, and queues each as an ordinary run. Once every trial has ended
the sweep is completed, its best run the best objective among trials without a collapse warning.

Collapse as a constraint: a completed trial whose run raised a warning or critical collapse warning is
told COMPLETE with its real objective and marked infeasible (the constraint "collapse" = 1, stored as
`Trial.set_constraint` stores it; Optuna 5's TPESampler and `Study.best_trial` read it), so it keeps its
value for charts, TPE learns to avoid its region, and it never wins. A failed, lost, diverged or cancelled
run is told FAIL.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from app.budgets import Limits, check_run
from app.errors import InputError
from app.storage.models import FINISHED_STATUSES, EvalStat, Run, RunWarning, Sweep, utcnow
from app.storage.sweeps import (
    PRUNED_PREFIX,
    best_trial,
    collapsed,
    last_metrics,
    objective_of,
    trial_public,
    trial_runs,
)
from app.sweeps.lease import sweeps_to_drive, take_lease
from app.sweeps.pruner import CRITICAL_ATTR, CollapsePruner
from app.sweeps.space import distributions, grid, overrides
from trainer import ConfigError, from_dict

log = logging.getLogger(__name__)
# the system attribute of Trial.set_constraint("collapse", ...): optuna.study._constrained_optimization
CONSTRAINT_ATTR = "constraints:collapse"
PRUNED_ATTR, OUTCOME_ATTR, COLLAPSE_ATTR = "pruned_reason", "outcome", "collapse"


def drive_sweeps(engine: Engine, storage: Any, *, driver: str, limits: Limits | None = None) -> int:
    """One pass; `storage` is a callable returning the Optuna storage (built only when a sweep needs it).
    Returns how many sweeps it drove."""
    driven = 0
    for sweep_id in sweeps_to_drive(engine):
        if not take_lease(engine, sweep_id, driver=driver):
            continue  # another server drives it
        try:
            drive_sweep(engine, storage(), sweep_id, limits=limits)
            driven += 1
        except (OperationalError, StorageInternalError):  # Optuna wraps the database's errors in its own
            log.exception("sweep %s: the database is busy; next pass", sweep_id)
        except Exception as exc:  # a defect or a broken study: the sweep says so instead of retrying forever
            log.exception("sweep %s: the driver failed", sweep_id)
            _fail(engine, sweep_id, f"the sweep driver failed: {type(exc).__name__}: {exc}")
    return driven


def sampler_of(sweep: Sweep, trials_so_far: int, *, asking: bool = False) -> BaseSampler:
    """The sweep's sampler. A sampler is rebuilt every pass, so a random one's seed moves on with each trial;
    the grid's stays (it shuffles the grid by its seed, then trial n takes point n). The grid sampler only
    asks: its after_trial calls Study.stop(), which only works inside Study.optimize()."""
    if sweep.sampler == "grid" and asking:
        return GridSampler(grid(sweep.search_space), seed=sweep.seed)
    seed = (sweep.seed * 1_000_003 + trials_so_far) % 2**32
    if sweep.sampler == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed)  # it reads the trials' constraints itself


def open_study(storage: RDBStorage, sweep: Sweep, trials_so_far: int = 0, *, asking: bool = False) -> optuna.Study:
    return optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        direction=sweep.direction,  # type: ignore[arg-type]
        sampler=sampler_of(sweep, trials_so_far, asking=asking),
        pruner=CollapsePruner(),
        load_if_exists=True,
    )


def drive_sweep(engine: Engine, storage: RDBStorage, sweep_id: int, *, limits: Limits | None = None) -> None:
    with Session(engine) as session:
        sweep = session.get(Sweep, sweep_id)
        if sweep is None:
            return
        if sweep.status == "queued":
            session.exec(update(Sweep).where(col(Sweep.id) == sweep_id).values(status="running"))
            session.commit()
            session.refresh(sweep)
        study = open_study(storage, sweep)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        runs = {r.trial_number: r for r in trial_runs(session, sweep_id)}
        if sweep.status == "cancelled":
            _stop_all(session, sweep_id)
        for number, trial in trials.items():
            run = runs.get(number)
            if trial.state != TrialState.RUNNING:
                if run is not None and trial.state == TrialState.PRUNED:
                    _mark_pruned(session, run, trial)
            elif run is None:  # asked, then the server stopped before queueing it
                study.tell(number, state=TrialState.FAIL)
            elif run.status in FINISHED_STATUSES:
                _tell(session, storage, study, sweep, run, trial)
            elif run.status == "running":
                _watch(session, storage, study, sweep, run, trial)
        # read again after the runs: a cancel commits the sweep's status before it cancels the queued runs,
        # so runs read after a cancel come with its status, and no new trial is asked for a freed slot
        if _status(session, sweep_id) == "running":
            _ask(session, storage, sweep, runs, len(trials), limits)
        _conclude(session, study, sweep)


def _tell(
    session: Session, storage: RDBStorage, study: optuna.Study, sweep: Sweep, run: Run, trial: FrozenTrial
) -> None:
    """Tell Optuna how the trial's run ended."""
    if run.status == "cancelled" and trial.user_attrs.get(PRUNED_ATTR):
        study.tell(trial.number, state=TrialState.PRUNED)
        return
    value = objective_of(last_metrics(session, [run.id or 0]).get(run.id or 0), sweep.objective)
    if run.status != "completed" or value is None:
        why = run.error or ("no finite objective in its last evaluation" if run.status == "completed" else "")
        storage.set_trial_user_attr(trial._trial_id, OUTCOME_ATTR, f"{run.status}: {why}"[:500])
        study.tell(trial.number, state=TrialState.FAIL)
        return
    infeasible = collapsed(run)
    storage.set_trial_user_attr(trial._trial_id, COLLAPSE_ATTR, run.max_severity if infeasible else None)
    storage.set_trial_system_attr(trial._trial_id, CONSTRAINT_ATTR, 1.0 if infeasible else 0.0)  # > 0: infeasible
    study.tell(trial.number, value)


def _watch(
    session: Session, storage: RDBStorage, study: optuna.Study, sweep: Sweep, run: Run, trial: FrozenTrial
) -> None:
    """Report the running trial's new evaluations (the k-th evaluation is step k) and prune it if due."""
    rows = session.exec(select(EvalStat.metrics).where(EvalStat.run_id == run.id).order_by(col(EvalStat.id))).all()
    for k, metrics in enumerate(rows):
        value = objective_of(metrics, sweep.objective)
        if k not in trial.intermediate_values and value is not None:
            storage.set_trial_intermediate_value(trial._trial_id, k, value)
    critical = session.exec(
        select(RunWarning.kind, RunWarning.step)
        .where(RunWarning.run_id == run.id, RunWarning.severity == "critical")
        .order_by(col(RunWarning.id))
    ).first()
    if critical is not None and CRITICAL_ATTR not in trial.system_attrs:
        storage.set_trial_system_attr(trial._trial_id, CRITICAL_ATTR, f"{critical[0]} at step {critical[1]}")
    reason = CollapsePruner().reason(study, storage.get_trial(trial._trial_id))
    if reason is None:
        return
    # the run first: a run that has just ended is told as it ended, on the next pass
    stopped = session.exec(
        update(Run)
        .where(col(Run.id) == run.id, col(Run.status) == "running")
        .values(cancel_requested=True, error=PRUNED_PREFIX + reason)
    )
    session.commit()
    if stopped.rowcount:
        storage.set_trial_user_attr(trial._trial_id, PRUNED_ATTR, reason)
        study.tell(trial.number, state=TrialState.PRUNED)
        log.info("sweep %s: trial %s (run %s) pruned: %s", sweep.id, trial.number, run.id, reason)


def _mark_pruned(session: Session, run: Run, trial: FrozenTrial) -> None:
    """A pruned run's end wrote its own (empty) error over the reason: write the reason back."""
    reason = trial.user_attrs.get(PRUNED_ATTR)
    if reason and run.status == "cancelled" and not (run.error or "").startswith(PRUNED_PREFIX):
        ended = update(Run).where(col(Run.id) == run.id, col(Run.status) == "cancelled")
        session.exec(ended.values(error=PRUNED_PREFIX + reason))
        session.commit()


def _ask(
    session: Session,
    storage: RDBStorage,
    sweep: Sweep,
    runs: dict[int | None, Run],
    started: int,
    limits: Limits | None,
) -> None:
    """Queue new trials while fewer than `parallelism` are queued or running and fewer than `n_trials` exist."""
    active = sum(1 for r in runs.values() if r.status in ("queued", "running"))
    fields = distributions(sweep.search_space, sweep.sampler)
    while active < sweep.parallelism and started < sweep.n_trials:
        study = open_study(storage, sweep, started, asking=True)  # a fresh seed for each trial
        trial = study.ask(fields)
        run = _trial_run(sweep, trial.number, trial.params, limits)
        if not _still_running(session, sweep.id or 0):  # cancelled (or failed) since the status was read
            session.rollback()
            storage.set_trial_user_attr(trial._trial_id, OUTCOME_ATTR, "the sweep ended before this trial was queued")
            study.tell(trial.number, state=TrialState.FAIL)
            return
        session.add(run)
        session.commit()  # the lock taken by _still_running goes with it
        if run.status == "failed":
            storage.set_trial_user_attr(trial._trial_id, OUTCOME_ATTR, str(run.error)[:500])
            study.tell(trial.number, state=TrialState.FAIL)
        else:
            active += 1
        started += 1


def _status(session: Session, sweep_id: int) -> str | None:
    """The sweep's status as committed now (each read sees the latest commit: SQLite reads outside a write
    transaction, PostgreSQL at read committed)."""
    return session.exec(select(Sweep.status).where(col(Sweep.id) == sweep_id)).first()


def _still_running(session: Session, sweep_id: int) -> bool:
    """Lock the sweep's row while it is running, until the caller commits: a cancel (an UPDATE of that row,
    app/storage/sweeps.py) waits for the new trial's run and then cancels it, or came first and no run is
    queued. A no-op UPDATE, because SQLite has no SELECT ... FOR UPDATE (its UPDATE takes the write lock)."""
    guard = update(Sweep).where(col(Sweep.id) == sweep_id, col(Sweep.status) == "running")
    return bool(session.exec(guard.values(status="running")).rowcount)


def _trial_run(sweep: Sweep, number: int, params: dict[str, Any], limits: Limits | None) -> Run:
    """The trial's run, queued; failed at once (with the reason) when its config is invalid or over budget."""
    name = f"sweep #{sweep.id} trial {number}"
    run = Run(name=name, preset=sweep.preset, config=sweep.config, sweep_id=sweep.id, trial_number=number)
    try:
        cfg = from_dict(overrides(params), base=from_dict(sweep.config))
        if limits is not None:
            check_run(cfg, limits)
    except ConfigError as exc:
        run.status, run.error, run.finished_at = "failed", f"this trial's config is invalid: {exc}", utcnow()
        return run
    except InputError as exc:
        run.status, run.error, run.finished_at = "failed", str(exc.errors[0]["msg"]), utcnow()
        return run
    run.config, run.num_classes = cfg.to_dict(), cfg.num_classes
    return run


def _conclude(session: Session, study: optuna.Study, sweep: Sweep) -> None:
    """Completed (with its best run) once all trials have ended and been told; a cancelled one is settled."""
    session.expire_all()
    runs = trial_runs(session, sweep.id or 0)
    if any(r.status in ("queued", "running") for r in runs):
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return
    if sweep.status == "running" and len(trials) < sweep.n_trials:
        return
    # a pruned run that ended after this pass read it wrote its empty error over the reason, and a settled
    # sweep is not driven again: the reason goes back now
    by_number = {r.trial_number: r for r in runs}
    for trial in trials:
        if trial.state == TrialState.PRUNED and trial.number in by_number:
            _mark_pruned(session, by_number[trial.number], trial)
    metrics = last_metrics(session, [r.id or 0 for r in runs])
    best = best_trial([trial_public(sweep, r, metrics.get(r.id or 0)) for r in runs], sweep.direction)
    values: dict[str, Any] = {"settled": True, "best_run_id": best.run_id if best else None}
    if sweep.status == "running":
        values |= {"status": "completed", "finished_at": utcnow()}
    values |= {"driver": None, "driver_until": None}  # the lease goes with it
    session.exec(update(Sweep).where(col(Sweep.id) == sweep.id, col(Sweep.status) == sweep.status).values(**values))
    session.commit()
    log.info("sweep %s: %s, best run %s", sweep.id, values.get("status", sweep.status), values["best_run_id"])


def _stop_all(session: Session, sweep_id: int) -> None:
    """A cancelled sweep: a trial queued after the cancel is cancelled too, a running one asked to stop."""
    session.exec(
        update(Run)
        .where(col(Run.sweep_id) == sweep_id, col(Run.status) == "queued")
        .values(status="cancelled", finished_at=utcnow(), cancel_requested=True, error="the sweep was cancelled")
    )
    session.exec(
        update(Run)
        .where(col(Run.sweep_id) == sweep_id, col(Run.status) == "running", col(Run.cancel_requested).is_(False))
        .values(cancel_requested=True)
    )
    session.commit()


def _fail(engine: Engine, sweep_id: int, error: str) -> None:
    with Session(engine) as session:
        session.exec(
            update(Sweep)
            .where(col(Sweep.id) == sweep_id, col(Sweep.status).in_(("queued", "running")))
            .values(status="failed", error=error[:2000], finished_at=utcnow())
        )
        session.commit()
        _stop_all(session, sweep_id)
