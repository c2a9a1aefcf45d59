"""Reading batch statistics for charts: increments since a step, and downsampling that keeps spikes.

Downsampling merges the sink's min/max blocks (app/storage/rollups.py) with the few raw batches around them,
so a million-batch run costs a few thousand small rows, never a million Python objects. Raw batches
come from `StatChunk` rows, decoded with numpy (app/storage/chunks.py).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, func, select
from sqlmodel import Session

from app.errors import InputError
from app.storage.chunks import Batches, decode_chunks
from app.storage.models import StatBlock, StatChunk, StatsPublic
from app.storage.rollups import LEVELS, Segments, combine, decode_hists, decode_stats, from_rows, level_rows
from trainer import BATCH_COLUMNS

_BIT = {name: i for i, name in enumerate(BATCH_COLUMNS)}


class RunRef(Protocol):
    """What reading statistics needs of a run: a `Run`, or the few columns the event stream reads."""

    id: int | None
    status: str
    steps: int


def get_stats(
    *,
    session: Session,
    run: RunRef,
    since_step: int = -1,
    max_points: int = 0,
    columns: list[str] | None = None,
    limit: int | None = None,
    until_step: int | None = None,
) -> StatsPublic:
    """Rows with since_step < step (<= until_step), ascending; with max_points > 0 and more rows than
    that, at most max_points points: per bucket its first and last step, each column's min and max in
    step order. `until_step` reads raw rows only (the event stream's catch-up)."""
    names = list(columns) if columns else list(BATCH_COLUMNS)
    unknown = [n for n in names if n not in _BIT]
    if unknown:
        raise InputError.at(
            ["query", "columns"], f"unknown column(s) {', '.join(unknown)}; known: {', '.join(BATCH_COLUMNS)}"
        )
    conn = session.connection()
    assert run.id is not None
    if max_points <= 0 or until_step is not None:  # no need to count the rows (a query of its own)
        return _raw_stats(conn, run, since_step, names, limit, until_step)
    total = run.steps if since_step < 0 else _count(conn, run.id, since_step)
    if total <= max_points:
        return _raw_stats(conn, run, since_step, names, limit)
    return _downsampled_stats(conn, run, since_step, names, total, max_points)


def _count(conn: Connection, run_id: int, since_step: int) -> int:
    """Batches after since_step: whole chunks by their row counts, the one that straddles it decoded."""
    t = StatChunk.__table__
    whole = conn.execute(
        select(func.coalesce(func.sum(t.c.rows), 0)).where(t.c.run_id == run_id, t.c.first_step > since_step)
    ).scalar_one()
    straddling = conn.execute(
        select(t.c.steps).where(t.c.run_id == run_id, t.c.first_step <= since_step, t.c.last_step > since_step)
    ).all()
    return int(whole) + sum(int((np.frombuffer(b, dtype=np.int64) > since_step).sum()) for (b,) in straddling)


def _read(
    conn: Connection, run_id: int, lo: int, hi: int | None, names: list[str], limit: int | None, hist: bool
) -> Batches:
    """The batches with lo < step (<= hi), ascending, the first `limit` of them: straight from the
    DBAPI cursor, a chunk's blobs decoded with numpy as they arrive."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cols = ["rows", "columns", "steps", "epochs", "values", *(["class_hist"] if hist else [])]
    quote = conn.dialect.identifier_preparer.quote
    sql = f"SELECT {', '.join(map(quote, cols))} FROM statchunk WHERE run_id = {mark} AND last_step > {mark}"
    params: list[int] = [run_id, lo]
    if hi is not None:
        sql += f" AND first_step <= {mark}"
        params.append(hi)
    sql += " ORDER BY first_step"
    if limit is not None:  # only the chunks that hold them: a client-side cursor (psycopg's) buffers all it selects
        sql += f" LIMIT {mark}"
        params.append(_chunks_holding(conn, run_id, lo, hi, limit))
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return decode_chunks(_fetch(cursor), names, lo, hi, limit, hist)
    finally:
        cursor.close()


def _chunks_holding(conn: Connection, run_id: int, lo: int, hi: int | None, limit: int) -> int:
    """How many chunks after lo, in step order, surely hold its first `limit` batches (fewer when there
    are not that many): counted by their row counts, without the first, which may straddle lo."""
    t = StatChunk.__table__
    query = select(t.c.rows).where(t.c.run_id == run_id, t.c.last_step > lo)
    if hi is not None:  # a chunk that straddles hi is the last one that counts anyway
        query = query.where(t.c.first_step <= hi)
    held, chunks = 0, 0
    result = conn.execute(query.order_by(t.c.first_step))
    try:
        for (rows,) in result:
            held, chunks = held + (rows if chunks else 0), chunks + 1
            if held >= limit:
                break
    finally:
        result.close()
    return max(chunks, 1)


def _fetch(cursor: Any, size: int = 64) -> Any:
    while rows := cursor.fetchmany(size):
        yield from rows


def _raw_stats(
    conn: Connection, run: RunRef, since_step: int, names: list[str], limit: int | None, until_step: int | None = None
) -> StatsPublic:
    batches = _read(conn, run.id or 0, since_step, until_step, names, limit, hist=True)
    columns, nonfinite = _columns_out(names, batches.values, batches.nan)
    steps = batches.steps.tolist()
    return StatsPublic.model_construct(  # built from checked values: no second validation pass
        run_id=run.id or 0,
        status=run.status,
        columns=columns,
        nonfinite=nonfinite,
        steps=steps,
        epochs=batches.epochs.tolist(),
        class_hist=_hist_lists(batches.hists or []),
        last_step=steps[-1] if steps else since_step,
        downsampled=False,
        bucket_size=1,
    )


def _downsampled_stats(
    conn: Connection, run: RunRef, since_step: int, names: list[str], total: int, max_points: int
) -> StatsPublic:
    run_id = run.id or 0
    n_buckets = max(1, max_points // 2)
    per_bucket = total / n_buckets
    start_level = max((lv for lv in range(LEVELS) if level_rows(lv) <= per_bucket), default=-1)
    seg = _cover(conn, run_id, since_step, start_level, names)
    before = np.cumsum(seg.rows) - seg.rows
    buckets = combine(seg, before * n_buckets // max(1, int(seg.rows.sum())))
    # two points per bucket (its first and last step), one when the bucket is a single batch
    keep = np.ones((len(buckets), 2), bool)
    keep[:, 1] = buckets.first_step != buckets.last_step
    steps = np.stack([buckets.first_step, buckets.last_step], axis=1)[keep]
    epochs = np.stack([buckets.first_epoch, buckets.last_epoch], axis=1)[keep]
    min_first = buckets.argmin <= buckets.argmax  # (G, K): the min occurs before the max
    first = np.where(min_first, buckets.mins, buckets.maxs)
    second = np.where(min_first, buckets.maxs, buckets.mins)
    has_nan = ((buckets.nan_any[:, None] >> np.array([_BIT[n] for n in names])) & 1).astype(bool)  # (G, K)
    # both extremes stay (min and max skip NaN, so a NaN beside a spike never hides it); a bucket that
    # held a NaN names it at its last point, and one that held nothing else is NaN at both
    values = np.stack([first, second], axis=1)[keep]  # (P, K)
    flags = np.stack([has_nan & np.isnan(first), has_nan], axis=1)[keep]
    columns, nonfinite = _columns_out(names, values, flags)
    step_list = steps.tolist()
    # the heatmap's column for a bucket: the mean predicted-class shares of its batches (both points)
    means = np.round(buckets.hist / np.maximum(buckets.rows, 1)[:, None], 6)
    hist_lists = np.stack([means, means], axis=1)[keep]  # (P, C)
    return StatsPublic.model_construct(
        run_id=run_id,
        status=run.status,
        columns=columns,
        nonfinite=nonfinite,
        steps=step_list,
        epochs=epochs.tolist(),
        class_hist=[[None if math.isnan(v) else v for v in row] for row in hist_lists.tolist()]
        if np.isnan(hist_lists).any()
        else hist_lists.tolist(),
        last_step=step_list[-1] if step_list else since_step,
        downsampled=True,
        bucket_size=math.ceil(per_bucket),
    )


def _cover(conn: Connection, run_id: int, since_step: int, start_level: int, names: list[str]) -> Segments:
    """The rows after since_step as stretches: the coarsest blocks that fit, finer ones at the
    edges, raw rows for what no block holds yet (the run's tail, or a run whose worker died)."""
    index = np.array([_BIT[n] for n in names])
    gaps: list[tuple[int, int | None]] = [(since_step, None)]  # (exclusive low, inclusive high) steps
    parts: list[Segments] = []
    for level in range(start_level, -1, -1):
        next_gaps: list[tuple[int, int | None]] = []
        for lo, hi in gaps:
            blocks = _blocks(conn, run_id, level, lo, hi, index)
            if not len(blocks):
                next_gaps.append((lo, hi))
                continue
            parts.append(blocks)
            # blocks hold consecutive rows, so only the stretches before and after them remain
            next_gaps += [(lo, int(blocks.first_step[0]) - 1), (int(blocks.last_step[-1]), hi)]
        gaps = [(lo, hi) for lo, hi in next_gaps if hi is None or hi > lo]
    for lo, hi in gaps:
        raw = _read(conn, run_id, lo, hi, names, None, hist=True)
        parts.append(from_rows(raw.steps, raw.epochs, raw.values, raw.nan_masks(names), raw.hist_array()))
    seg = Segments.concat(parts, len(names))
    return seg.take(np.argsort(seg.first_step, kind="stable"))


def _blocks(conn: Connection, run_id: int, level: int, lo: int, hi: int | None, index: np.ndarray) -> Segments:
    t = StatBlock.__table__
    query = select(
        t.c.first_step, t.c.last_step, t.c.first_epoch, t.c.last_epoch, t.c.rows, t.c.nan_any, t.c.stats, t.c.hist
    ).where(t.c.run_id == run_id, t.c.level == level, t.c.first_step > lo)
    if hi is not None:
        query = query.where(t.c.first_step <= hi, t.c.last_step <= hi)
    rows = conn.execute(query.order_by(t.c.first_step)).all()
    ints = np.array([r[:6] for r in rows], dtype=np.int64).reshape(len(rows), 6)
    mins, maxs, argmin, argmax = decode_stats([r[6] for r in rows], len(BATCH_COLUMNS))
    hist = decode_hists([r[7] for r in rows])
    return Segments(*ints.T, mins[:, index], maxs[:, index], argmin[:, index], argmax[:, index], hist)


def _columns_out(
    names: list[str], values: np.ndarray, nan_flags: np.ndarray
) -> tuple[dict[str, list[float | None]], dict[str, list[tuple[int, str]]]]:
    """JSON-ready columns: non-finite values become null; infinities and flagged points are named in
    the second dict. A flag marks a recorded NaN: the value itself, or (downsampled) one the bucket held
    beside the extremes it shows. A NaN without its flag was never recorded (a statistic newer than the
    batch)."""
    columns: dict[str, list[float | None]] = {}
    nonfinite: dict[str, list[tuple[int, str]]] = {}
    for j, name in enumerate(names):
        col = values[:, j]
        out: list[float | None] = col.tolist()
        bad = ~np.isfinite(col)
        for i in np.flatnonzero(bad | nan_flags[:, j]).tolist():
            if bad[i]:
                out[i] = None
            if np.isinf(col[i]):
                nonfinite.setdefault(name, []).append((i, "Infinity" if col[i] > 0 else "-Infinity"))
            if nan_flags[i, j]:
                nonfinite.setdefault(name, []).append((i, "NaN"))
        columns[name] = out
    return columns, nonfinite


def _hist_lists(hists: list[np.ndarray]) -> list[list[float]]:
    """float32 class shares (one (n, C) array per chunk) as JSON-ready lists, rounded to 6 places."""
    out: list[list[float]] = []
    for h in hists:
        out += np.round(h.astype(np.float64), 6).tolist()
    return out
