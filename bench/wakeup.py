"""Claim latency of an idle worker with and without NOTIFY wake-ups, side by side, on PostgreSQL.

The real `run_worker` (in a thread, its own engine) waits idle; runs are queued one at a time, each at a random
moment of the worker's poll interval, and the latency is from just before the queueing commit to the claim's
`started_at` (one machine, one clock). The same worker polls only with `listen=False`.
Run: `.venv/bin/python -m bench.wakeup [--submits 20] [--poll 0.5] [--quick]`; PostgreSQL from
COLLAPSEWATCH_BENCH_POSTGRES (default the test server on 127.0.0.1:5432), in a private schema dropped after.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, create_engine, select, text
from sqlmodel import Session

from app.storage.engine import init_db, make_engine
from app.storage.models import Run
from app.worker.claim import run_worker
from bench.common import append_results, machine_line
from trainer import from_dict

PG_URL = os.environ.get("COLLAPSEWATCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TINY = {"epochs": 1, "batch_size": 32, "hidden_sizes": [16], "data": {"n_samples": 128}}


def _queue(engine: Engine) -> tuple[int, datetime]:
    """A queued run, as POST /api/runs stores it; (its id, the time just before the commit)."""
    cfg = from_dict(TINY, base="fixed")
    with Session(engine) as session:
        run = Run(name="bench wakeup", config=cfg.to_dict(), num_classes=cfg.num_classes)
        session.add(run)
        submitted = datetime.now(UTC)
        session.commit()
        assert run.id is not None
        return run.id, submitted


def _state(engine: Engine, run_id: int) -> tuple[str, datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(select(Run.status, Run.started_at).where(Run.id == run_id)).one()
    return str(row.status), row.started_at


def _wait(engine: Engine, run_id: int, done: set[str], timeout: float = 60.0) -> tuple[str, datetime | None]:
    deadline = time.monotonic() + timeout
    while (state := _state(engine, run_id))[0] not in done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {state[0]} after {timeout} s")
        time.sleep(0.002)
    return state


def measure(url: str, *, listen: bool, poll: float, submits: int, seed: int) -> list[float]:
    """Claim latencies (seconds) of one idle worker over `submits` runs queued at random moments."""
    rng = random.Random(seed)
    engine, worker_engine = make_engine(url), make_engine(url)
    stop = threading.Event()
    name = f"bench-{'notify' if listen else 'poll'}:{os.getpid()}"
    kwargs = {"name": name, "poll_seconds": poll, "heartbeat_seconds": 0.5, "stop": stop, "listen": listen}
    worker = threading.Thread(target=run_worker, args=(worker_engine,), kwargs=kwargs, daemon=True)
    worker.start()
    latencies = []
    try:
        time.sleep(poll + 0.2)  # started, found nothing, waiting
        for _ in range(submits):
            time.sleep(rng.uniform(0.0, poll))  # a random moment of the worker's wait
            run_id, submitted = _queue(engine)
            _, started = _wait(engine, run_id, {"running", "completed", "failed", "cancelled", "diverged"})
            assert started is not None
            latencies.append((started - submitted).total_seconds())
            _wait(engine, run_id, {"completed", "failed", "cancelled", "diverged"})
    finally:
        stop.set()
        worker.join(30)
        engine.dispose()
        worker_engine.dispose()
    return latencies


def _summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    ms = [x * 1000 for x in (statistics.median(ordered), p90, ordered[0], ordered[-1])]
    return "median {:.0f} ms, p90 {:.0f} ms, min {:.0f} ms, max {:.0f} ms".format(*ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=20, help="runs queued per worker (default 20)")
    parser.add_argument("--poll", type=float, default=0.5, help="the worker's poll interval, s (default 0.5)")
    parser.add_argument("--quick", action="store_true", help="5 submits each, nothing recorded")
    args = parser.parse_args()
    submits = 5 if args.quick else args.submits
    schema = f"cw_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        version = str(conn.execute(text("SHOW server_version")).scalar_one())
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    load_before = os.getloadavg()[0]
    try:
        setup = make_engine(url)
        init_db(setup)
        setup.dispose()
        polled = measure(url, listen=False, poll=args.poll, submits=submits, seed=1)
        woken = measure(url, listen=True, poll=args.poll, submits=submits, seed=1)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    lines = [
        f"### Wake-ups: claim latency of an idle worker, polling only vs NOTIFY ({machine_line()}; "
        f"PostgreSQL {version} on 127.0.0.1; load average 1 min before / after: {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f}; poll every {args.poll:g} s; {submits} runs queued one at a time, each at a "
        "random moment of the wait; queueing commit -> claimed)",
        "",
        f"- polling only (`--no-listen`): {_summary(polled)}",
        f"- LISTEN/NOTIFY, polling kept: {_summary(woken)}",
    ]
    print("\n".join(lines))
    if not args.quick:
        append_results(lines)


if __name__ == "__main__":
    main()
