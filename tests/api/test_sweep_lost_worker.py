"""Trials that end behind the driver's back. A trial whose worker is lost: the reaper marks its run failed
("worker lost"), as for any run, and the sweep goes on: Optuna is told the trial failed, the next trial is
queued in its place, and the sweep completes with the best of the trials that trained. A pruned trial whose
run ends while the driver concludes keeps its reason. The driver is run by hand (no server lifespan) so each
pass is seen."""

from __future__ import annotations

from collections.abc import Iterator

import optuna
import pytest
from factories import LOCAL, TINY, make_eval, make_warning, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, update
from sqlmodel import Session, col

from app.core.config import Settings
from app.main import create_app
from app.storage.models import Run, Sweep
from app.sweeps.driver import _conclude, drive_sweep, open_study
from app.sweeps.storage import optuna_storage, release_storage
from app.worker.claim import LOST_PREFIX, db_now, reap_stale_runs


@pytest.fixture
def offline(settings: Settings) -> Iterator[tuple[TestClient, Engine]]:
    app = create_app(settings)  # no lifespan: the test runs the reaper and the driver itself
    try:
        yield TestClient(app, base_url=LOCAL), app.state.engine
    finally:
        release_storage(settings.database_url)
        app.state.engine.dispose()


def _seed_sweep(client: TestClient, engine: Engine, storage: object, n_trials: int) -> tuple[dict, list[int]]:
    """A random sweep over the seed with `n_trials` trials, all at once, driven once: (the sweep, its runs)."""
    body = {"config": TINY, "search_space": {"seed": {"low": 0, "high": 100}}, "sampler": "random",
            "n_trials": n_trials, "parallelism": n_trials}  # fmt: skip
    sweep = client.post("/api/sweeps", json=body).json()
    drive_sweep(engine, storage, sweep["id"])
    return sweep, [t["run_id"] for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]]


def _set_run(engine: Engine, run_id: int, **values: object) -> None:
    """What a worker's writes amount to, stored behind the driver's back."""
    with Session(engine) as session:
        session.exec(update(Run).where(col(Run.id) == run_id).values(**values))
        session.commit()


def test_a_lost_workers_trial_is_failed_and_the_sweep_queues_the_next_and_completes(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    storage = optuna_storage(settings.database_url)
    body = {"config": TINY, "search_space": {"seed": {"low": 0, "high": 100}}, "sampler": "random", "n_trials": 2,
            "parallelism": 1}  # fmt: skip
    sweep = client.post("/api/sweeps", json=body).json()
    drive_sweep(engine, storage, sweep["id"])
    (first,) = [t["run_id"] for t in client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]]

    # a worker claimed it and died: its last heartbeat is a minute old by the database's clock
    _set_run(engine, first, status="running", worker="gone-host:1", heartbeat_at=db_now(engine, -60))
    assert reap_stale_runs(engine, stale_after_seconds=15) == [first]

    drive_sweep(engine, storage, sweep["id"])
    going = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert going["status"] == "running" and [t["status"] for t in going["trials"]] == ["failed", "queued"]
    assert going["trials"][0]["error"].startswith(LOST_PREFIX)
    second = going["trials"][1]["run_id"]

    write_stats(engine, second, [], evals=(make_eval(4, kl=0.4),))
    _set_run(engine, second, status="completed")
    drive_sweep(engine, storage, sweep["id"])
    done = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert done["status"] == "completed" and done["trials_finished"] == 2
    assert done["best_run_id"] == second and done["best_objective"] == 0.4
    study = optuna.load_study(study_name=sweep["study_name"], storage=storage)
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["FAIL", "COMPLETE"]


def test_a_pruned_trial_that_ends_while_the_sweep_concludes_keeps_its_reason(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    storage = optuna_storage(settings.database_url)
    sweep, (run_id,) = _seed_sweep(client, engine, storage, 1)
    _set_run(engine, run_id, status="running", worker="w:1")
    write_stats(engine, run_id, [], warnings=(make_warning(12),))
    drive_sweep(engine, storage, sweep["id"])  # the critical warning: pruned, asked to stop
    assert client.get(f"/api/runs/{run_id}").json()["error"].startswith("pruned: critical collapse warning")

    # the pass that concludes read the run while it still ran; then its worker ended it, error and all
    with Session(engine) as session:
        ended = update(Run).where(col(Run.id) == run_id)
        session.exec(ended.values(status="cancelled", error=None))
        session.commit()
        row = session.get(Sweep, sweep["id"])
        assert row is not None
        _conclude(session, open_study(storage, row), row)
    done = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert done["status"] == "completed"
    (trial,) = done["trials"]
    assert trial["status"] == "pruned", trial
    assert trial["pruned_reason"].startswith("critical collapse warning: one_hot at step 12"), trial


def test_the_sweeps_list_counts_each_sweeps_own_trials_in_three_queries(
    offline: tuple[TestClient, Engine], settings: Settings
) -> None:
    client, engine = offline
    storage = optuna_storage(settings.database_url)
    ids, kls = [], {1: [0.5], 2: [0.7, 0.2]}  # per trial of the sweep of 1 and of 2 trials
    for n_trials in (1, 2):
        sweep, runs = _seed_sweep(client, engine, storage, n_trials)
        ids.append(sweep["id"])
        for run_id, kl in zip(runs, kls[n_trials], strict=True):
            write_stats(engine, run_id, [], evals=(make_eval(4, kl=kl),))
            _set_run(engine, run_id, status="completed")
        drive_sweep(engine, storage, sweep["id"])

    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731  (before_cursor_execute's statement)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        listed = {s["id"]: s for s in client.get("/api/sweeps").json()}
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert [(listed[i]["trials_started"], listed[i]["trials_finished"], listed[i]["best_objective"]) for i in ids] == [
        (1, 1, 0.5), (2, 2, 0.2)
    ]  # fmt: skip
    assert sum(s.lstrip().upper().startswith("SELECT") for s in statements) == 3, statements
