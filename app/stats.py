"""Reading batch statistics for charts: increments since a step, and downsampling that keeps spikes.

Downsampling merges the sink's min/max blocks (app/rollup.py) with the few raw rows around them,
so a million-batch run costs a few thousand small rows, never a million Python objects.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, func, select
from sqlmodel import Session

from app.errors import InputError
from app.models import BatchStat, StatBlock, StatsPublic
from app.rollup import LEVELS, Segments, combine, decode_stats, from_rows, level_rows
from trainer import BATCH_COLUMNS

_BIT = {name: i for i, name in enumerate(BATCH_COLUMNS)}
_HIST_BATCH = 500  # steps per IN (...) lookup: far below every database's parameter limit


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
    t = BatchStat.__table__
    query = select(t.c.step).where(t.c.run_id == run_id, t.c.step > since_step).subquery()
    return int(conn.execute(select(func.count()).select_from(query)).scalar_one())


def _raw_rows(
    conn: Connection, run_id: int, lo: int, hi: int | None, names: list[str], limit: int | None, hist: bool
) -> list[tuple[Any, ...]]:
    """(step, epoch, nan_mask, [class_hist,] *names) tuples straight from the DBAPI cursor: building
    SQLAlchemy rows costs more than the query itself for tens of thousands of rows."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    quote = conn.dialect.identifier_preparer.quote
    cols = ["step", "epoch", "nan_mask", *(["class_hist"] if hist else []), *names]
    sql = f"SELECT {', '.join(map(quote, cols))} FROM batchstat WHERE run_id = {mark} AND step > {mark}"
    params: list[int] = [run_id, lo]
    if hi is not None:
        sql += f" AND step <= {mark}"
        params.append(hi)
    sql += " ORDER BY step" + (f" LIMIT {int(limit)}" if limit is not None else "")
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _raw_stats(
    conn: Connection, run: RunRef, since_step: int, names: list[str], limit: int | None, until_step: int | None = None
) -> StatsPublic:
    rows = _raw_rows(conn, run.id or 0, since_step, until_step, names, limit, hist=True)
    steps = [r[0] for r in rows]
    masks = np.array([r[2] for r in rows], dtype=np.int64)
    values = np.array([r[4:] for r in rows], dtype=np.float64).reshape(len(rows), len(names))  # None -> NaN
    columns, nonfinite = _columns_out(names, values, masks[:, None] >> np.array([_BIT[n] for n in names]) & 1)
    return StatsPublic.model_construct(  # built from checked values: no second validation pass
        run_id=run.id or 0,
        status=run.status,
        columns=columns,
        nonfinite=nonfinite,
        steps=steps,
        epochs=[r[1] for r in rows],
        class_hist=_decode_hists([r[3] for r in rows]),
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
    has_nan = (buckets.nan_any[:, None] >> np.array([_BIT[n] for n in names])) & 1  # (G, K)
    # a bucket that held a NaN shows it at its last point (its finite extreme stays at the first)
    second = np.where(has_nan == 1, np.nan, second)
    values = np.stack([first, second], axis=1)[keep]  # (P, K)
    flags = np.stack([has_nan, has_nan], axis=1)[keep]  # consulted only where a value is not finite
    columns, nonfinite = _columns_out(names, values, flags)
    step_list = steps.tolist()
    return StatsPublic.model_construct(
        run_id=run_id,
        status=run.status,
        columns=columns,
        nonfinite=nonfinite,
        steps=step_list,
        epochs=epochs.tolist(),
        class_hist=_hists_at(conn, run_id, step_list),
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
        rows = _raw_rows(conn, run_id, lo, hi, names, None, hist=False)
        values = np.array([r[3:] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
        parts.append(from_rows([r[0] for r in rows], [r[1] for r in rows], values, [r[2] for r in rows]))
    seg = Segments.concat(parts, len(names))
    return seg.take(np.argsort(seg.first_step, kind="stable"))


def _blocks(conn: Connection, run_id: int, level: int, lo: int, hi: int | None, index: np.ndarray) -> Segments:
    t = StatBlock.__table__
    query = select(
        t.c.first_step, t.c.last_step, t.c.first_epoch, t.c.last_epoch, t.c.rows, t.c.nan_any, t.c.stats
    ).where(t.c.run_id == run_id, t.c.level == level, t.c.first_step > lo)
    if hi is not None:
        query = query.where(t.c.first_step <= hi, t.c.last_step <= hi)
    rows = conn.execute(query.order_by(t.c.first_step)).all()
    ints = np.array([r[:6] for r in rows], dtype=np.int64).reshape(len(rows), 6)
    mins, maxs, argmin, argmax = decode_stats([r[6] for r in rows], len(BATCH_COLUMNS))
    return Segments(*ints.T, mins[:, index], maxs[:, index], argmin[:, index], argmax[:, index])


def _columns_out(
    names: list[str], values: np.ndarray, nan_flags: np.ndarray
) -> tuple[dict[str, list[float | None]], dict[str, list[tuple[int, str]]]]:
    """JSON-ready columns: non-finite values become null and are named in the second dict; a NULL
    without its NaN bit is a value that was never recorded (a column newer than the row)."""
    columns: dict[str, list[float | None]] = {}
    nonfinite: dict[str, list[tuple[int, str]]] = {}
    for j, name in enumerate(names):
        col = values[:, j]
        out: list[float | None] = col.tolist()
        for i in np.flatnonzero(~np.isfinite(col)).tolist():
            out[i] = None
            if np.isinf(col[i]):
                nonfinite.setdefault(name, []).append((i, "Infinity" if col[i] > 0 else "-Infinity"))
            elif nan_flags[i, j]:
                nonfinite.setdefault(name, []).append((i, "NaN"))
        columns[name] = out
    return columns, nonfinite


def _decode_hists(blobs: list[bytes | None]) -> list[list[float]]:
    """float32 class shares per row; decoded in one numpy call per distinct width."""
    out: list[list[float]] = [[] for _ in blobs]
    widths: dict[int, list[int]] = {}
    for i, blob in enumerate(blobs):
        if blob:
            widths.setdefault(len(blob), []).append(i)
    for width, rows in widths.items():
        arr = np.frombuffer(b"".join(blobs[i] or b"" for i in rows), dtype=np.float32).reshape(len(rows), width // 4)
        for i, hist in zip(rows, np.round(arr.astype(np.float64), 6).tolist(), strict=True):
            out[i] = hist
    return out


def _hists_at(conn: Connection, run_id: int, steps: list[int]) -> list[list[float]]:
    t = BatchStat.__table__
    found: dict[int, bytes] = {}
    for i in range(0, len(steps), _HIST_BATCH):
        part = steps[i : i + _HIST_BATCH]
        query = select(t.c.step, t.c.class_hist).where(t.c.run_id == run_id, t.c.step.in_(part))
        found.update({s: h for s, h in conn.execute(query).all()})
    return _decode_hists([found.get(s) for s in steps])
