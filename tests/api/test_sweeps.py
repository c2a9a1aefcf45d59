"""Sweeps on Optuna: validation, the driver's bookkeeping (collapse as a constraint, failures, one driver per
sweep), and real sweeps trained by two worker processes on SQLite and PostgreSQL (pruning, cancelling)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from factories import LOCAL, LONG, TINY, config, make_eval, wait_until, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, text, update
from sqlmodel import Session, SQLModel, col, select

import app.sweeps.task as sweep_task
from app.core.config import Settings
from app.main import create_app
from app.storage.models import Run
from app.sweeps.driver import drive_sweep
from app.sweeps.lease import take_lease
from app.sweeps.storage import optuna_schema, optuna_storage, release_storage
from app.worker.pool import WorkerPool
from trainer import CollapseWarning

GRID = {"lr": {"choices": [0.01, 0.05, 0.1]}, "entropy_penalty": {"choices": ["linear", "quadratic"]}}
# collapse-prone at the top learning rate: a critical exploding-logits warning within ~70 of its 16,000 batches
COLLAPSING = {**config(LONG, lr=10.0, hidden_sizes=[64], data={"n_samples": 512}), "epochs": 1000}


def _sweep(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/sweeps", json={"config": TINY, "search_space": GRID, **body})
    assert response.status_code == 201, response.text
    return response.json()


def _ended(client: TestClient, sweep_id: int, timeout: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
        settled = all(t["status"] not in ("queued", "running") for t in sweep["trials"])
        return (
            sweep
            if sweep["status"] in ("completed", "failed") or (sweep["status"] == "cancelled" and settled)
            else None
        )

    return wait_until(ended, timeout=timeout, what=f"sweep {sweep_id} to end")


def _trial_states(storage: Any, study_name: str) -> list[str]:
    study = optuna.load_study(study_name=study_name, storage=storage)
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# --- validation: a clear 422 naming the field, and nothing stored --------------------------------------
@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"search_space": {"lrr": {"low": 0.01, "high": 0.1}}}, ["search_space", "lrr"], "unknown config field 'lrr'"),
        (
            {"search_space": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
            ["search_space", "weight_decay", "log"],
            "a log scale needs a positive range",
        ),
        ({"search_space": {"lr": {"low": 0.01, "high": 20.0}}}, ["search_space", "lr", "high"], "(0.0, 10.0]"),
        (
            {"search_space": {"entropy_penalty": {"choices": []}}},
            ["search_space", "entropy_penalty", "choices"],
            "non-empty",
        ),
        (
            {"search_space": {"activation": {"choices": ["relu", "swish"]}}},
            ["search_space", "activation", "choices", 1],
            "swish",
        ),
        ({"search_space": {"data.path": {"choices": ["/etc/passwd"]}}}, ["search_space", "data.path"], "cannot turn"),
        ({"n_trials": 501}, ["n_trials"], "less than or equal to 500"),
        ({"sampler": "grid", "n_trials": 7}, ["n_trials"], "the grid has 6 points"),
        ({"sampler": "grid", "search_space": {"lr": {"low": 0.01, "high": 0.1}}}, ["search_space", "lr"], "step"),
        ({"parallelism": 0}, ["parallelism"], "greater than or equal to 1"),
        ({"objective": "loss"}, ["objective"], "val_kl"),
        ({"name": "a\x00b"}, ["name"], "control character"),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_field(client: TestClient, body: dict, loc: list, words: str) -> None:
    response = client.post("/api/sweeps", json={"config": TINY, "search_space": GRID, **body})
    assert response.status_code == 422, response.text
    (error,) = [e for e in response.json()["detail"] if e["loc"][1:] == loc]
    assert words in error["msg"]
    assert client.get("/api/sweeps").json() == []


def test_unknown_sweeps_are_404_and_no_optuna_storage_is_built_without_a_sweep(
    client: TestClient, settings: Settings
) -> None:
    from app.sweeps import storage

    assert client.get("/api/sweeps/3").json() == {"detail": "Sweep 3 not found"}
    assert client.post("/api/sweeps/3/cancel").status_code == 404
    assert client.get("/api/sweeps/3/trials.csv").status_code == 404
    assert settings.database_url not in storage._storages  # built lazily, by the first pass that needs it


def test_optuna_tables_share_the_sqlite_file_without_colliding_with_ours(settings: Settings, engine: Engine) -> None:
    ours = set(SQLModel.metadata.tables)
    try:
        optuna_storage(settings.database_url)
        theirs = set(inspect(engine).get_table_names()) - ours
    finally:
        release_storage(settings.database_url)
    assert {"studies", "trials", "trial_values", "version_info"} <= theirs
    assert not theirs & ours and "sweep" in ours
    assert optuna_schema(settings.database_url) is None
    assert optuna_schema("postgresql://u@h/db") == "optuna"
    assert optuna_schema("postgresql://u@h/db?options=-csearch_path%3Dcw") == "cw_optuna"


def test_two_servers_never_drive_one_sweep_at_once(client: TestClient, engine: Engine) -> None:
    sweep_id = _sweep(client)["id"]
    assert take_lease(engine, sweep_id, driver="server-a")
    assert not take_lease(engine, sweep_id, driver="server-b")
    assert take_lease(engine, sweep_id, driver="server-a")  # renewed by its holder


# --- the driver's bookkeeping, with runs finished by hand -----------------------------------------------
def _finish(engine: Engine, run_id: int, status: str, error: str | None = None) -> None:
    with Session(engine) as session:
        session.exec(update(Run).where(col(Run.id) == run_id).values(status=status, error=error))
        session.commit()


def test_a_collapsed_trial_never_wins_and_a_failed_one_does_not_stop_the_sweep(
    settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings)  # no lifespan: this test drives the sweep itself
    engine, client = app.state.engine, TestClient(app, base_url=LOCAL)
    space = {"lr": {"low": 0.001, "high": 0.1, "log": True}}
    sweep = _sweep(client, search_space=space, sampler="random", n_trials=3, parallelism=3)
    storage = optuna_storage(settings.database_url)
    try:
        drive_sweep(engine, storage, sweep["id"])
        runs = [t["run_id"] for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]]
        assert len(runs) == 3 and _trial_states(storage, sweep["study_name"]) == ["RUNNING"] * 3
        collapsing = CollapseWarning("dominant_class", "warning", 3, "one class", {"hist_top_share": 0.9})
        write_stats(engine, runs[0], [], evals=(make_eval(4, kl=0.1),), warnings=(collapsing,))
        write_stats(engine, runs[1], [], evals=(make_eval(4, kl=0.5),))
        for run_id, status in zip(runs, ("completed", "completed", "failed"), strict=True):
            _finish(engine, run_id, status, "worker lost (no heartbeat)" if status == "failed" else None)
        drive_sweep(engine, storage, sweep["id"])
        done = client.get(f"/api/sweeps/{sweep['id']}").json()
        assert done["status"] == "completed" and done["trials_finished"] == 3
        assert [t["collapsed"] for t in done["trials"]] == [True, False, False]
        assert done["best_run_id"] == runs[1] and done["best_trial"]["objective"] == 0.5  # not the lower, collapsed 0.1
        study = optuna.load_study(study_name=sweep["study_name"], storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
        assert study.trials[0].value == 0.1 and study.trials[0].constraints == {"collapse": 1.0}  # kept, but infeasible
        assert study.best_trial.number == 1  # Optuna agrees
        csv_lines = client.get(f"/api/sweeps/{sweep['id']}/trials.csv").text.splitlines()
        assert csv_lines[0].startswith("number,run_id,status,val_kl,lr,") and len(csv_lines) == 4
        assert client.post(f"/api/sweeps/{sweep['id']}/cancel").status_code == 409
    finally:
        release_storage(settings.database_url)
        engine.dispose()


# --- real sweeps: two worker processes ------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """One server with a pool of two worker processes on one SQLite file, shared by the tests below."""
    folder = tmp_path_factory.mktemp("sweeps")
    settings = Settings(
        database_url=f"sqlite:///{folder / 'collapsewatch.db'}",
        data_dir=folder / "data",
        workers=0,
        heartbeat_seconds=0.2,
        stale_after_seconds=5.0,
        reap_interval_seconds=0.5,
    )
    with pytest.MonkeyPatch.context() as patch, _server(settings, patch) as client:
        yield client, settings


class _server:
    def __init__(self, settings: Settings, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(sweep_task, "DRIVE_INTERVAL_SECONDS", 0.2)
        self.app = create_app(settings)
        self.app.state.worker_pool = WorkerPool(
            settings.database_url, 2, heartbeat_seconds=0.2, stale_after_seconds=5.0
        )
        self.client = TestClient(self.app, base_url=LOCAL)

    def __enter__(self) -> TestClient:
        return self.client.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)


def _check_six_trials(client: TestClient, engine: Engine, storage_url: str, sweep: dict[str, Any]) -> None:
    done = _ended(client, sweep["id"])
    assert done["status"] == "completed", done
    trials = done["trials"]
    assert [t["number"] for t in trials] == list(range(6)) and all(t["status"] == "completed" for t in trials)
    with Session(engine) as session:  # every trial ran exactly once: one run each, each trained to its end
        runs = session.exec(select(Run).where(Run.sweep_id == sweep["id"])).all()
        assert len(runs) == 6 and all(r.worker and r.steps == 4 and r.started_at for r in runs)
    assert [t["name"] for t in trials] == [f"sweep #{sweep['id']} trial {n}" for n in range(6)]
    best = min(trials, key=lambda t: t["objective"])
    assert done["best_run_id"] == best["run_id"] and done["best_trial"]["number"] == best["number"]
    assert _trial_states(optuna_storage(storage_url), sweep["study_name"]) == ["COMPLETE"] * 6


def test_a_grid_sweep_of_six_trials_on_sqlite_with_two_worker_processes(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    sweep = _sweep(client, sampler="grid", parallelism=2)
    assert sweep["n_trials"] == 6  # the grid's size
    _check_six_trials(client, client.app.state.engine, settings.database_url, sweep)  # type: ignore[attr-defined]
    params = {
        (t["params"]["lr"], t["params"]["entropy_penalty"])
        for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]
    }
    assert len(params) == 6  # each grid point once


def test_a_trial_that_collapses_is_pruned_early(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    sweep = _sweep(
        client, preset="collapse-prone", config=COLLAPSING, search_space={"seed": {"choices": [0]}}, n_trials=1
    )
    done = _ended(client, sweep["id"])
    (trial,) = done["trials"]
    assert trial["status"] == "pruned", trial
    assert trial["pruned_reason"].startswith("critical collapse warning: ")
    assert trial["error"].startswith("pruned: critical collapse warning")
    assert trial["steps"] < 1000 * 16 // 4  # stopped long before its end
    assert done["status"] == "completed" and done["best_trial"] is None
    assert _trial_states(optuna_storage(settings.database_url), sweep["study_name"]) == ["PRUNED"]


def test_cancelling_a_sweep_cancels_its_trials(served: tuple[TestClient, Settings]) -> None:
    client, settings = served
    sweep = _sweep(client, config=LONG, search_space={"seed": {"low": 0, "high": 100}}, n_trials=6, parallelism=3)
    wait_until(
        lambda: sum(t["status"] == "running" for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]) == 2,
        timeout=30,
        what="two trials running",
    )
    cancelled = client.post(f"/api/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert [t["status"] for t in cancelled["trials"]].count("cancelled") == 1  # the queued one, at once
    assert client.post(f"/api/sweeps/{sweep['id']}/cancel").json()["status"] == "cancelled"  # idempotent
    done = _ended(client, sweep["id"], timeout=30)
    assert [t["status"] for t in done["trials"]] == ["cancelled"] * 3  # the running ones stopped; none queued after
    states: list[str] = []

    def told() -> bool:
        states[:] = _trial_states(optuna_storage(settings.database_url), sweep["study_name"])
        return states == ["FAIL"] * 3

    try:
        wait_until(told, timeout=10, what="Optuna told every trial FAIL")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it holds {states}") from None


# --- PostgreSQL ----------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_sweep_on_postgresql_keeps_optuna_in_its_own_schema(pg_url: str, tmp_path: Path) -> None:
    schema = pg_url.rsplit("%3D", 1)[1]
    settings = Settings(
        database_url=pg_url, data_dir=tmp_path, workers=0, heartbeat_seconds=0.2, stale_after_seconds=5.0
    )
    admin = create_engine(pg_url.split("?")[0])
    try:
        with pytest.MonkeyPatch.context() as patch, _server(settings, patch) as client:
            sweep = _sweep(client, sampler="tpe", n_trials=6, parallelism=2)
            _check_six_trials(client, client.app.state.engine, pg_url, sweep)  # type: ignore[attr-defined]
        release_storage(pg_url)
        with admin.connect() as conn:
            tables = conn.execute(
                text("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema LIKE :s"),
                {"s": f"{schema}%"},
            ).all()
        theirs = {name for s, name in tables if s == f"{schema}_optuna"}
        ours = {name for s, name in tables if s == schema}
        assert {"studies", "trials", "alembic_version"} <= theirs and "trials" not in ours and "sweep" in ours
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}_optuna" CASCADE'))
        admin.dispose()


# --- the pruner on its own ------------------------------------------------------------------------------
def test_the_collapse_pruner_stops_a_critical_trial_and_one_clearly_behind() -> None:
    from app.sweeps.pruner import CRITICAL_ATTR, CollapsePruner

    study = optuna.create_study(direction="minimize")
    for value in (1.0, 1.1, 1.2):  # three finished trials, reported at evaluations 0 and 1
        trial = study.ask()
        trial.report(value + 0.5, 0)
        trial.report(value, 1)
        study.tell(trial, value)
    pruner = CollapsePruner()

    def reason(values: list[float], critical: str | None = None) -> str | None:
        trial = study.ask()
        for step, value in enumerate(values):
            trial.report(value, step)
        if critical:
            study._storage.set_trial_system_attr(trial._trial_id, CRITICAL_ATTR, critical)
        return pruner.reason(study, study._storage.get_trial(trial._trial_id))

    assert reason([1.6, 1.05]) is None  # among the others
    assert reason([9.0]) is None  # one evaluation is the warm-up: too early to judge
    assert reason([9.0, 9.0]) == "objective 9 at evaluation 2 is behind the other trials"
    assert reason([1.5], critical="exploding_logits at step 70") == (
        "critical collapse warning: exploding_logits at step 70"
    )
