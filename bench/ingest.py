"""Batch rows per second through the worker's `DatabaseSink` into SQLite, beside raw sqlite3 `executemany`.

Chunks are built up front; the sink's time runs from the first `on_batches` to `on_end` returning
(everything committed). The baseline is the plain way, and this project's own way before chunks:
one row per batch, one REAL column per statistic, raw `executemany`, same pragmas, interleaved.
Run: `.venv/bin/python -m bench.ingest [--rows 100000 1000000] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import gc
import os
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

from app.storage.engine import init_db, make_engine
from app.storage.models import Run
from app.worker.sink import DatabaseSink
from bench.chunks import make_chunks
from bench.common import append_results, machine_line
from trainer import BATCH_COLUMNS, BatchChunk, TrainResult

TARGET_ROWS_PER_S = 100_000
_BITS = np.array([1 << i for i in range(len(BATCH_COLUMNS))], dtype=np.int64)
# one row per batch: NaN as NULL plus its bit in nan_mask (SQLite turns a bound NaN into NULL)
ROW_TABLE = (
    "CREATE TABLE batchrow (run_id INTEGER NOT NULL REFERENCES run (id), step BIGINT NOT NULL, "
    "epoch INTEGER NOT NULL, nan_mask BIGINT NOT NULL, class_hist BLOB NOT NULL, "
    + ", ".join(f"{name} DOUBLE" for name in BATCH_COLUMNS)
    + ", PRIMARY KEY (run_id, step))"
)


@dataclass
class Timing:
    seconds: float
    transactions: int = 0
    call_us: list[float] | None = None  # per on_batches call (sink only)
    backlog_ms: float = 0.0  # last on_batches until on_end returned: what was still to write


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


def run_sink(chunks: list[BatchChunk], path: Path, pace: float | None = None) -> Timing:
    """All chunks through a fresh sink, as fast as possible or (pace) at that many rows per second,
    as a training loop hands them over; the clock stops when on_end has returned."""
    run_id = _fresh_db(path)
    engine = make_engine(f"sqlite:///{path}")
    commits = [0]
    event.listen(engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    sink = DatabaseSink(engine, run_id)
    calls: list[float] = []
    clock = time.perf_counter
    start = clock()
    due = start
    for chunk in chunks:
        if pace:
            due += len(chunk) / pace
            time.sleep(max(0.0, due - clock()))  # the training thread computing (GIL released)
        t = clock()
        sink.on_batches(chunk)
        calls.append(clock() - t)
    last_call = clock()
    sink.on_end(TrainResult("completed", {}, len(chunks), 1, 0.0, None, []))
    end = clock()
    engine.dispose()
    if sink.error is not None:
        raise RuntimeError(f"the sink failed: {sink.error!r}")
    return Timing(end - start, commits[0], [c * 1e6 for c in calls], (end - last_call) * 1e3)


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
    conn.execute(ROW_TABLE)
    names = ("run_id", "step", "epoch", "nan_mask", "class_hist", *BATCH_COLUMNS)
    sql = f"INSERT INTO batchrow ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
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
    """Every batch is there (and, for the sink, every complete rollup block); returns a checksum:
    the NaN count over all statistics and the sum of the finite losses."""
    conn = sqlite3.connect(path)
    if with_blocks:
        count, nans, losses = 0, 0, []
        for n, columns, blob in conn.execute('SELECT rows, columns, "values" FROM statchunk'):
            values = np.frombuffer(blob, dtype=np.float64).reshape(len(columns.split(",")), n)
            count, nans = count + n, nans + int(np.isnan(values).sum())
            losses.append(values[columns.split(",").index("loss")])
        loss = np.concatenate(losses) if losses else np.zeros(0)
        blocks = conn.execute("SELECT count(*) FROM statblock").fetchone()[0]
    else:
        table = np.array(conn.execute("SELECT nan_mask, loss FROM batchrow").fetchall(), dtype=np.float64)
        count, blocks = len(table), None
        nans = int(sum(int(m).bit_count() for m in table[:, 0])) if count else 0
        loss = table[:, 1] if count else np.zeros(0)  # NULL (a NaN) read back as NaN, left out below
    conn.close()
    if count != rows:
        raise RuntimeError(f"{path.name}: {count} rows stored, {rows} sent")
    expected = rows // 16 + rows // 256 + rows // 4096
    if with_blocks and blocks != expected:
        raise RuntimeError(f"{path.name}: {blocks} rollup blocks, expected {expected}")
    return nans, round(float(loss[np.isfinite(loss)].sum()), 6)


def _calls(timings: list[Timing]) -> dict[str, float]:
    calls = [c for t in timings for c in t.call_us or []]
    return {
        "median_us": statistics.median(calls),
        "p99_us": float(np.percentile(calls, 99)),
        "max_us": max(calls),
        "total_ms": statistics.median(sum(t.call_us or []) / 1e3 for t in timings),
        "backlog_ms": statistics.median(t.backlog_ms for t in timings),
    }


def measure(rows: int, per_chunk: int, repeats: int, group: int, pace: float, tmp: Path) -> dict[str, object]:
    chunks = make_chunks(rows, per_chunk)
    runs: dict[str, list[Timing]] = {"sink": [], "baseline": [], "paced": []}
    variants = list(runs) if pace else ["sink", "baseline"]
    for r in range(repeats):
        sums = {}
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:  # rotated: drift hits all
            path = tmp / f"{variant}-{rows}-{r}.db"
            gc.collect()
            if variant == "baseline":
                runs[variant].append(run_baseline(chunks, path, group))
            else:
                runs[variant].append(run_sink(chunks, path, pace if variant == "paced" else None))
            sums[variant] = _check(path, rows, with_blocks=variant != "baseline")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if len(set(sums.values())) != 1:
            raise RuntimeError(f"the sink and the baseline stored different rows: {sums}")
    return {
        "sink_s": statistics.median(t.seconds for t in runs["sink"]),
        "base_s": statistics.median(t.seconds for t in runs["baseline"]),
        "sink_tx": statistics.median(t.transactions for t in runs["sink"]),
        "base_tx": runs["baseline"][0].transactions,
        "burst": _calls(runs["sink"]),
        "paced": _calls(runs["paced"]) if pace else None,
        "chunks": len(chunks),
    }


def _call_row(rows: int, mode: str, c: dict[str, float], chunks: int) -> str:
    return (
        f"| {rows:,} | {mode} | {c['median_us']:.1f} / {c['p99_us']:.1f} / {c['max_us']:,.0f} "
        f"| {c['total_ms']:.1f} ms for {chunks:,} chunks | {c['backlog_ms']:.0f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk", type=int, default=50, help="rows per BatchChunk (the trainer's flush_batches)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=20, help="chunks per transaction in the baseline")
    parser.add_argument(
        "--pace", type=float, default=TARGET_ROWS_PER_S, help="rows/s of the paced producer (0: no paced runs)"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 2 repeats: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = [20_000], 2
    tmp = Path(tempfile.mkdtemp(prefix="cw-ingest-"))
    load_before = os.getloadavg()[0]
    measure(2_000, args.chunk, 1, args.group, 0, tmp)  # warm-up: imports, first connections, page cache
    results = {}
    try:
        for rows in args.rows:
            results[rows] = measure(rows, args.chunk, args.repeats, args.group, args.pace, tmp)
            print(f"{rows:,} rows: {rows / results[rows]['sink_s']:,.0f} rows/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"### Ingest: DatabaseSink vs raw sqlite3 executemany ({machine_line()}; load average 1 min before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}; SQLite WAL, synchronous=NORMAL, chunks of {args.chunk} rows x "
        f"{len(BATCH_COLUMNS)} columns + 8-class histogram, ~1% of rows with a NaN; medians of {args.repeats}, "
        "interleaved)",
        "",
        "| rows | sink rows/s | sqlite3 executemany rows/s | sink / baseline | target "
        "| transactions: sink (baseline) |",
        "|---|---|---|---|---|---|",
    ]
    for rows, m in results.items():
        sink_rate, base_rate = rows / m["sink_s"], rows / m["base_s"]
        verdict = "met" if sink_rate >= TARGET_ROWS_PER_S else "MISSED"
        lines.append(
            f"| {rows:,} | {sink_rate:,.0f} | {base_rate:,.0f} | {sink_rate / base_rate:.2f}x "
            f"| ≥ {TARGET_ROWS_PER_S:,} {verdict} | {m['sink_tx']:.0f} ({m['base_tx']}) |"
        )
    lines += [
        "",
        "| rows | producer | on_batches per chunk: median / p99 / max µs | training thread in on_batches, total "
        "| last on_batches → on_end returned |",
        "|---|---|---|---|---|",
    ]
    for rows, m in results.items():
        lines.append(_call_row(rows, "all at once (the throughput runs above)", m["burst"], m["chunks"]))
        if m["paced"]:
            lines.append(_call_row(rows, f"paced at {args.pace:,.0f} rows/s", m["paced"], m["chunks"]))
    lines += [
        "",
        "Sink: first on_batches until on_end returns (every row and rollup block committed, the run marked "
        "finished); it stores a StatChunk row of packed arrays per chunk (at most 1,024 batches each). Baseline: "
        "the same batches from the same chunks (tuples built inside its timing) as one row per batch, one REAL "
        f"column per statistic (this project's storage before chunks), {args.group} chunks per transaction, no "
        "rollup blocks and no run summary. Both stored the same batches (count, NaN count and loss sum "
        "compared). The paced producer sleeps between chunks as "
        "a training loop computes, so the writer works throughout while on_batches is timed; its last column "
        "is the backlog the writer still had when training ended.",
    ]
    print("\n".join(lines), flush=True)
    if not args.quick:  # a smoke run is not a result
        append_results(lines)


if __name__ == "__main__":
    main()
