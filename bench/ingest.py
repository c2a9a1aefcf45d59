"""Batch rows per second through the worker's `DatabaseSink` into SQLite, beside raw sqlite3 `executemany`.

Chunks are built up front; the sink's time runs from the first `on_batches` to `on_end` returning
(everything committed), the baseline's over the same rows, same schema and pragmas, interleaved.
Run: `.venv/bin/python -m bench.ingest [--rows 100000 1000000] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import event
from sqlmodel import Session

from app.db import init_db, make_engine
from app.models import Run
from app.sink import DatabaseSink
from bench.chunks import make_chunks
from bench.common import append_results, machine_line
from trainer import BATCH_COLUMNS, BatchChunk, TrainResult

TARGET_ROWS_PER_S = 100_000
_BITS = np.array([1 << i for i in range(len(BATCH_COLUMNS))], dtype=np.int64)


@dataclass
class Timing:
    seconds: float
    transactions: int = 0
    call_us: list[float] | None = None  # per on_batches call (sink only)


def _fresh_db(path: Path) -> int:
    """The app's schema in a new file, with one run; returns its id."""
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    with Session(engine) as session:
        run = Run(name="ingest", preset="fixed", status="running", config={})
        session.add(run)
        session.commit()
        run_id = run.id
    engine.dispose()
    assert run_id is not None
    return run_id


def run_sink(chunks: list[BatchChunk], path: Path) -> Timing:
    run_id = _fresh_db(path)
    engine = make_engine(f"sqlite:///{path}")
    commits = [0]
    event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    sink = DatabaseSink(engine, run_id)
    calls: list[float] = []
    clock = time.perf_counter
    start = clock()
    for chunk in chunks:
        t = clock()
        sink.on_batches(chunk)
        calls.append(clock() - t)
    sink.on_end(TrainResult("completed", {}, len(chunks), 1, 0.0, None, []))
    elapsed = clock() - start
    engine.dispose()
    if sink.error is not None:
        raise RuntimeError(f"the sink failed: {sink.error!r}")
    return Timing(elapsed, commits[0], [c * 1e6 for c in calls])


def _baseline_rows(run_id: int, chunk: BatchChunk) -> list[tuple]:
    """The plain way: one tuple per batch; a bound NaN becomes NULL in SQLite, its bit in nan_mask."""
    masks = (np.isnan(chunk.values) * _BITS).sum(axis=1).tolist()
    hists = [row.tobytes() for row in chunk.class_hist.astype(np.float32)]
    return [
        (run_id, step, epoch, mask, hist, *values)
        for step, epoch, mask, hist, values in zip(
            chunk.steps.tolist(), chunk.epochs.tolist(), masks, hists, chunk.values.tolist(), strict=True
        )
    ]


def run_baseline(chunks: list[BatchChunk], path: Path, group: int) -> Timing:
    run_id = _fresh_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")
    names = ("run_id", "step", "epoch", "nan_mask", "class_hist", *BATCH_COLUMNS)
    sql = f"INSERT INTO batchstat ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    transactions = 0
    start = time.perf_counter()
    for i in range(0, len(chunks), group):
        conn.execute("BEGIN")
        for chunk in chunks[i : i + group]:
            conn.executemany(sql, _baseline_rows(run_id, chunk))
        conn.execute("COMMIT")
        transactions += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return Timing(elapsed, transactions)


def _check(path: Path, rows: int, with_blocks: bool) -> tuple[int, float]:
    """Every row is there (and, for the sink, every complete rollup block); returns a checksum."""
    conn = sqlite3.connect(path)
    count, nan_bits, loss_sum = conn.execute("SELECT count(*), sum(nan_mask), total(loss) FROM batchstat").fetchone()
    blocks = conn.execute("SELECT count(*) FROM statblock").fetchone()[0]
    conn.close()
    if count != rows:
        raise RuntimeError(f"{path.name}: {count} rows stored, {rows} sent")
    expected = rows // 16 + rows // 256 + rows // 4096
    if with_blocks and blocks != expected:
        raise RuntimeError(f"{path.name}: {blocks} rollup blocks, expected {expected}")
    return int(nan_bits or 0), round(loss_sum, 6)


def measure(rows: int, per_chunk: int, repeats: int, group: int, tmp: Path) -> dict[str, object]:
    chunks = make_chunks(rows, per_chunk)
    sink_t: list[Timing] = []
    base_t: list[Timing] = []
    for r in range(repeats):
        order = ("sink", "baseline") if r % 2 == 0 else ("baseline", "sink")
        sums = {}
        for variant in order:
            path = tmp / f"{variant}-{rows}-{r}.db"
            gc.collect()
            if variant == "sink":
                sink_t.append(run_sink(chunks, path))
            else:
                base_t.append(run_baseline(chunks, path, group))
            sums[variant] = _check(path, rows, with_blocks=variant == "sink")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if sums["sink"] != sums["baseline"]:
            raise RuntimeError(f"the sink and the baseline stored different rows: {sums}")
    calls = [c for t in sink_t for c in t.call_us or []]
    call_total_ms = statistics.median(sum(t.call_us or []) / 1e3 for t in sink_t)
    return {
        "sink_s": statistics.median(t.seconds for t in sink_t),
        "base_s": statistics.median(t.seconds for t in base_t),
        "sink_tx": statistics.median(t.transactions for t in sink_t),
        "base_tx": base_t[0].transactions,
        "call_median_us": statistics.median(calls),
        "call_p99_us": float(np.percentile(calls, 99)),
        "call_max_us": max(calls),
        "call_total_ms": call_total_ms,
        "chunks": len(chunks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk", type=int, default=50, help="rows per BatchChunk (the trainer's flush_batches)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=20, help="chunks per transaction in the baseline")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 2 repeats: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = [20_000], 2
    tmp = Path(tempfile.mkdtemp(prefix="cw-ingest-"))
    measure(2_000, args.chunk, 1, args.group, tmp)  # warm-up: imports, first connections, page cache
    lines = [
        f"### Ingest: DatabaseSink vs raw sqlite3 executemany ({machine_line()}; SQLite WAL, synchronous=NORMAL, "
        f"chunks of {args.chunk} rows x {len(BATCH_COLUMNS)} columns + 8-class histogram, ~1% rows with a NaN; "
        f"medians of {args.repeats}, interleaved)",
        "",
        "| rows | sink rows/s | sqlite3 executemany rows/s | sink / baseline | target | sink tx (baseline tx) "
        "| on_batches per chunk: median / p99 / max µs | training thread in on_batches, total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for rows in args.rows:
            m = measure(rows, args.chunk, args.repeats, args.group, tmp)
            sink_rate, base_rate = rows / m["sink_s"], rows / m["base_s"]
            verdict = "met" if sink_rate >= TARGET_ROWS_PER_S else "MISSED"
            lines.append(
                f"| {rows:,} | {sink_rate:,.0f} | {base_rate:,.0f} | {sink_rate / base_rate:.2f}x "
                f"| ≥{TARGET_ROWS_PER_S:,} {verdict} | {m['sink_tx']:.0f} ({m['base_tx']}) "
                f"| {m['call_median_us']:.1f} / {m['call_p99_us']:.1f} / {m['call_max_us']:.0f} "
                f"| {m['call_total_ms']:.1f} ms for {m['chunks']:,} chunks ({m['sink_s']:.2f} s run) |"
            )
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines += [
        "",
        "Sink time: first on_batches until on_end returns (all rows and rollup blocks committed); the "
        "baseline builds its row tuples from the same chunks inside its timing and writes only batchstat "
        "(no rollup blocks, no run summary). Both stored the same rows (count and checksum compared).",
    ]
    append_results(lines)


if __name__ == "__main__":
    main()
