"""Writing a run's batch statistics: `StatChunk` rows, the rollup blocks they complete, the run's summary.

The worker's `DatabaseSink` and the ingest API (a user's own loop) both write through `write_chunks`, so
charts, streams and compare read one format whoever produced it. `resume_rollup` rebuilds a rollup's
unfinished tail from committed rows, for a writer that does not hold it in memory between writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Connection, func, insert, select, update

from app.storage.chunks import (
    BLOCK_COLUMNS,
    CHUNK_COLUMNS,
    chunk_rows,
    executemany,
    full_values,
    insert_sql,
    merge_chunks,
    nan_masks,
)
from app.storage.clock import db_now
from app.storage.models import Run, RunWarning, StatBlock
from app.storage.reads import _blocks as read_blocks
from app.storage.reads import _read as read_batches
from app.storage.rollups import FANOUT, LEVELS, Rollup, Segments, encode_hists, encode_stats
from app.storage.values import finite_or_none, to_json_safe
from trainer import BATCH_COLUMNS, BatchChunk, CollapseWarning, EvalRecord

_ALL = np.arange(len(BATCH_COLUMNS))


def write_chunks(conn: Connection, run_id: int, chunks: list[BatchChunk], rollup: Rollup | None) -> None:
    """Store consecutive chunks (ascending steps, after what is stored) in the connection's transaction:
    their rows, the blocks they complete in `rollup` (None: no blocks, the rows are read raw), and the
    run's `steps`, `last_step` and `latest`."""
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return
    chunk_sql = insert_sql(conn.engine, "statchunk", CHUNK_COLUMNS)
    n = 0
    for chunk in merge_chunks(chunks):
        executemany(conn, chunk_sql, chunk_rows(run_id, chunk))
        n += len(chunk)
        if rollup is not None:
            done = rollup.add(chunk.steps, chunk.epochs, full_values(chunk), nan_masks(chunk), chunk.class_hist)
            _write_blocks(conn, run_id, done)
    last = chunks[-1]
    latest = {name: finite_or_none(v) for name, v in zip(last.columns, last.values[-1].tolist(), strict=True)}
    conn.execute(
        update(Run).where(Run.id == run_id).values(steps=Run.steps + n, last_step=int(last.steps[-1]), latest=latest)
    )


def _write_blocks(conn: Connection, run_id: int, done: list[tuple[int, Segments]]) -> None:
    rows = [
        (run_id, level, *fields)
        for level, seg in done
        for fields in zip(
            seg.first_step.tolist(),
            seg.last_step.tolist(),
            seg.first_epoch.tolist(),
            seg.last_epoch.tolist(),
            seg.rows.tolist(),
            seg.nan_any.tolist(),
            encode_stats(seg),
            encode_hists(seg),
            strict=True,
        )
    ]
    if rows:
        executemany(conn, insert_sql(conn.engine, "statblock", BLOCK_COLUMNS), rows)


def resume_rollup(conn: Connection, run_id: int, num_classes: int) -> Rollup | None:
    """The rollup of a run's committed rows as a writer that kept it in memory would hold it: blocks
    written per level, the finer blocks a coarser one still waits for, the rows after the last block.
    None when the stored blocks do not cover a prefix of the rows (a writer without a rollup wrote them):
    new rows are then left raw, as readers expect."""
    t = StatBlock.__table__
    counts = {
        int(level): (int(count), int(last))
        for level, count, last in conn.execute(
            select(t.c.level, func.count(), func.max(t.c.last_step)).where(t.c.run_id == run_id).group_by(t.c.level)
        ).all()
    }
    rollup = Rollup(len(BATCH_COLUMNS), num_classes)
    rollup.emitted = [counts.get(level, (0, -1))[0] for level in range(LEVELS)]
    ends = [counts.get(level, (0, -1))[1] for level in range(LEVELS)]
    for level in range(1, LEVELS):
        # the blocks of the level below that no block of this level holds yet
        pending = read_blocks(conn, run_id, level - 1, ends[level], None, _ALL)
        if len(pending) != rollup.emitted[level - 1] - FANOUT * rollup.emitted[level]:
            return None
        rollup.pending[level] = pending
    names = list(BATCH_COLUMNS)
    tail = read_batches(conn, run_id, ends[0], None, names, None, hist=True)
    if len(tail) >= FANOUT:
        return None
    if len(tail):
        hists = tail.hist_array()
        if hists.shape[1] != num_classes:
            return None
        rollup.rows = (tail.steps, tail.epochs, tail.values, tail.nan_masks(names), hists.astype(np.float64))
    return rollup


def eval_values(run_id: int, record: EvalRecord) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": int(record.step),
        "epoch": int(record.epoch),
        "metrics": to_json_safe(dict(record.metrics)),
        "pred_hist": to_json_safe(list(record.pred_hist)),
        "target_hist": to_json_safe(list(record.target_hist)),
        "confusion": to_json_safe([list(row) for row in record.confusion]),
    }


def insert_warning(conn: Connection, run_id: int, warning: CollapseWarning) -> None:
    """Store a warning, stamped with the database's clock (a worker's or client's may be skewed)."""
    conn.execute(insert(RunWarning).values(**warning_values(run_id, warning), created_at=db_now(conn)))


def warning_values(run_id: int, warning: CollapseWarning) -> dict[str, Any]:
    advice = warning.advice
    return {
        "run_id": run_id,
        "kind": warning.kind,
        "severity": warning.severity,
        "step": int(warning.step),
        "message": warning.message,
        "evidence": to_json_safe(dict(warning.evidence)),
        "advice": None if advice is None else to_json_safe({"message": advice.message, "overrides": advice.overrides}),
    }
