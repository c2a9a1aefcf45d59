"""NOTIFY wake-ups on PostgreSQL: an idle worker claims a submitted run at once instead of at its next poll, a
cancel reaches the heartbeat at once; polling stays the truth when the LISTEN connection is gone."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import LOCAL, LONG, TINY, WorkerThread, add_run, config, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text

from app.core.config import Settings
from app.main import create_app
from app.storage.engine import make_engine
from app.storage.models import Run
from app.storage.notify import channel_for
from app.worker.claim import claim_run
from app.worker.lease import Heartbeat, Lease
from app.worker.wakeup import LISTEN_KEEPALIVE, Wakeups

pytestmark = pytest.mark.postgres
SUBMITS = 5


@pytest.fixture
def pg_client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=pg_url, data_dir=tmp_path / "data", workers=0))
    with TestClient(app, base_url=LOCAL) as client:
        yield client


@pytest.fixture
def worker_engine(pg_url: str, pg_client: TestClient) -> Iterator[Engine]:
    """A worker's own engine (its own connection pool), on the schema the app created."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _run(engine: Engine, run_id: int) -> tuple[str, datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(select(Run.status, Run.started_at).where(Run.id == run_id)).one()
    return row.status, row.started_at


def test_an_idle_worker_polling_every_5_s_claims_a_submitted_run_within_100_ms(
    pg_client: TestClient, worker_engine: Engine
) -> None:
    latencies = []
    with WorkerThread(worker_engine, poll_seconds=5.0, heartbeat_seconds=0.2):
        time.sleep(0.5)  # started, found nothing, waiting
        for _ in range(SUBMITS):
            submitted = datetime.now(UTC)
            run_id = pg_client.post("/api/runs", json={"config": config(TINY)}).raise_for_status().json()["id"]
            _, started = wait_until(
                lambda run_id=run_id: (s := _run(worker_engine, run_id))[0] != "queued" and s,
                timeout=10,
                interval=0.002,
            )
            assert started is not None
            latencies.append((started - submitted).total_seconds())
            wait_until(lambda run_id=run_id: _run(worker_engine, run_id)[0] == "completed", timeout=20, what="the run")
            time.sleep(0.3)  # idle again: back in its 5 s wait
    median = statistics.median(latencies)
    print(f"\nsubmit (POST sent) -> claimed, idle worker polling every 5 s: median {median * 1000:.0f} ms, "
          f"each {', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")  # fmt: skip
    # by polling alone, a run submitted 0.3 s into a 5 s wait waits ~4.7 s
    assert median < 1.0 and max(latencies) < 2.0, latencies


def test_a_cancel_reaches_the_heartbeat_at_once(pg_client: TestClient, worker_engine: Engine) -> None:
    run_id = add_run(worker_engine, **LONG)
    assert claim_run(worker_engine, worker="w:1") == run_id
    lease = Lease.of(worker_engine, run_id, "w:1")
    wakeups = Wakeups(worker_engine)
    assert wakeups.listening
    try:
        with Heartbeat(worker_engine, run_id, "w:1", 5.0, lease=lease, wakeups=wakeups, poll_seconds=5.0) as beat:
            time.sleep(0.3)  # the first 5 s wait has begun
            asked = time.monotonic()
            assert pg_client.post(f"/api/runs/{run_id}/cancel").status_code == 200
            wait_until(lambda: beat.stop_reason == "cancelled", timeout=6, interval=0.002, what="the cancel")
            heard = time.monotonic() - asked
    finally:
        wakeups.close()
    print(f"\ncancel -> heard by a heartbeat polling every 5 s: {heard * 1000:.0f} ms")
    assert heard < 1.0


def test_wakeups_hear_their_schema_only_and_any_way_a_run_is_queued(worker_engine: Engine) -> None:
    wakeups = Wakeups(worker_engine)
    stop = threading.Event()
    try:
        # a connection that only reads learns of a dead path only through its keepalives
        params = wakeups._conn.info.get_parameters()
        assert {k: params.get(k) for k in LISTEN_KEEPALIVE} == {k: str(v) for k, v in LISTEN_KEEPALIVE.items()}
        with worker_engine.connect() as conn:  # another deployment on the same database
            conn.execute(text("SELECT pg_notify(:channel, 'queued:1')"), {"channel": channel_for("elsewhere")})
            conn.commit()
        assert not wakeups.wait(0.5, stop=stop, want=lambda p: p.startswith("queued:"))
        run_id = add_run(worker_engine)  # straight into the table, as a sweep or the doctor does
        started = time.monotonic()
        assert wakeups.wait(5.0, stop=stop, want=lambda p: p == f"queued:{run_id}")
        assert time.monotonic() - started < 1.0
    finally:
        wakeups.close()


def test_a_worker_whose_listen_connection_dies_claims_by_polling(worker_engine: Engine) -> None:
    with worker_engine.connect() as conn:
        schema = str(conn.execute(text("SELECT current_schema()")).scalar_one())
    with WorkerThread(worker_engine, poll_seconds=0.5, heartbeat_seconds=0.2):
        time.sleep(0.5)
        with worker_engine.begin() as conn:  # an idle-connection killer, a proxy restart
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND query LIKE :channel AND pid <> pg_backend_pid()"
                ),
                {"channel": f"%{channel_for(schema)}%"},
            ).all()
        assert ended == [(True,)]
        run_id = add_run(worker_engine, **TINY)
        status = wait_until(lambda: (s := _run(worker_engine, run_id)[0]) == "completed" and s, timeout=20)
    assert status == "completed"
