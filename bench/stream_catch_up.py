"""Memory and time of one event stream catching up a run it is 100,000 rows behind, beside an earlier tree.

The stream joins a feed that is already at the run's end (another stream follows from there), so it
reads the backlog itself. Memory: tracemalloc's peak over the catch-up (Python allocations, every
thread); time: a separate pass without tracemalloc, which slows allocation. Each tree is measured in a
process of its own on the same SQLite file.
Run: `.venv/bin/python bench/stream_catch_up.py [--rows 100000] [--before-ref HEAD | --before PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_LAST_STEP = re.compile(r'"last_step":(-?\d+)')


# --- one tree, in its own process (its `app` first on sys.path: imports stay inside) ---------------------
def measure(db: Path, run_id: int, rows: int) -> dict[str, Any]:
    import asyncio
    import tracemalloc
    from contextlib import aclosing

    from app.api.routes.stream import run_events
    from app.storage.engine import make_engine
    from app.storage.feed import FeedHub

    engine = make_engine(f"sqlite:///{db}")

    class Connected:
        async def is_disconnected(self) -> bool:
            return False

    async def follow(hub: FeedHub, since_step: int, until_step: int | None) -> tuple[int, int]:
        events = sent = 0
        async with aclosing(run_events(Connected(), hub, run_id, since_step)) as texts:  # type: ignore[arg-type]
            async for text in texts:
                sent += len(text)
                if text.startswith("event: stats"):
                    events += 1
                    if until_step is not None and int(_LAST_STEP.findall(text)[-1]) >= until_step:
                        break
        return events, sent

    async def catch_up(traced: bool) -> tuple[float, int, int, int]:
        hub = FeedHub(engine)
        live = asyncio.create_task(follow(hub, rows - 1, None))  # puts the shared feed at the run's end
        while not (hub.feeds and next(iter(hub.feeds.values())).polled):
            await asyncio.sleep(0.01)
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        events, sent = await follow(hub, -1, rows - 1)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        tracemalloc.stop()
        live.cancel()
        return seconds, peak, events, sent

    seconds, _, events, sent = asyncio.run(catch_up(traced=False))
    _, peak, _, _ = asyncio.run(catch_up(traced=True))
    engine.dispose()
    return {"seconds": seconds, "peak_mb": peak / 1e6, "events": events, "sent_mb": sent / 1e6}


def measure_tree(tree: Path, db: Path, run_id: int, rows: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, str(Path(__file__).resolve()), "--measure", str(db), str(run_id), str(rows)]
    out = subprocess.run(args, cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the parent: the database, the trees, the table -----------------------------------------------------
def build_run(db: Path, rows: int) -> int:
    """A running run with `rows` batches (still running: its feed keeps polling, as for a live run)."""
    import numpy as np
    from sqlmodel import Session

    from app.storage.engine import init_db, make_engine
    from app.storage.models import Run
    from app.worker.sink import DatabaseSink
    from trainer import BATCH_COLUMNS, BatchChunk

    engine = make_engine(f"sqlite:///{db}")
    init_db(engine)
    with Session(engine) as session:
        run = Run(name="catch-up", status="running")
        session.add(run)
        session.commit()
        run_id = run.id or 0
    sink = DatabaseSink(engine, run_id)
    rng = np.random.default_rng(0)
    for first in range(0, rows, 1000):  # random values: the size of a row is what counts here
        steps = np.arange(first, min(first + 1000, rows), dtype=np.int64)
        values = rng.normal(size=(len(steps), len(BATCH_COLUMNS)))
        sink.on_batches(BatchChunk(steps, steps // 1000, values, rng.dirichlet(np.ones(8), size=len(steps))))
    sink.close()
    engine.dispose()
    return run_id


def before_tree(args: argparse.Namespace, tmp: Path) -> tuple[str, Path] | None:
    if args.before:
        return args.before_label, args.before.resolve()
    if not args.before_ref:
        return None
    # a read-only export of the ref's code (git archive): no checkout, no change to the working tree
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.before_ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = tmp / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit, "app", "trainer"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return f"before: {commit}", tree


def report(rows: int, results: dict[str, dict[str, Any]]) -> list[str]:
    from bench.common import machine_line

    lines = [
        f"## Event stream: one client {rows:,} rows behind catches up (bench/stream_catch_up.py)",
        "",
        f"{machine_line()}; SQLite file; the stream joins a feed already at the run's end, so it reads the "
        "backlog itself. Peak: tracemalloc over the catch-up (Python allocations, all threads); time: a pass "
        "without tracemalloc.",
        "",
        "| tree | peak memory | time | stats events | sent |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['peak_mb']:.1f} MB | {r['seconds']:.2f} s | {r['events']} | {r['sent_mb']:.1f} MB |"
        )
    return lines


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--measure":
        print(json.dumps(measure(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return
    sys.path.insert(0, str(ROOT))  # run as a file: `bench` and this tree's `app`
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--before", type=Path, help="also measure this checkout (e.g. an earlier commit)")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--before-ref", help="also measure this git ref, exported with git archive")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cw-catch-up-"))
    try:
        db = tmp / "catch-up.db"
        started = time.perf_counter()
        run_id = build_run(db, args.rows)
        print(f"run {run_id}: {args.rows:,} rows written in {time.perf_counter() - started:.1f} s", flush=True)
        before = before_tree(args, tmp)
        trees = dict([before] if before else []) | {"this tree": ROOT}
        results = {label: measure_tree(tree, db, run_id, args.rows) for label, tree in trees.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = report(args.rows, results)
    print("\n".join(lines), flush=True)
    if not args.no_record:
        from bench.common import append_results

        append_results(lines)


if __name__ == "__main__":
    main()
