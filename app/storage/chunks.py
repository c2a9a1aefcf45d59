"""Batch statistics as `StatChunk` rows (one per chunk of consecutive batches) and back.

Writing a chunk is one parameter tuple of packed arrays; reading decodes a few blobs with numpy.
A row holds at most CHUNK_ROWS batches, so a live client's increment never decodes more than that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from trainer import BATCH_COLUMNS, BatchChunk

CHUNK_ROWS = 1024
_BIT = {name: i for i, name in enumerate(BATCH_COLUMNS)}

CHUNK_COLUMNS = (
    "run_id", "first_step", "last_step", "rows", "columns", "steps", "epochs", "values", "class_hist",
)  # fmt: skip
BLOCK_COLUMNS = (
    "run_id", "level", "first_step", "last_step", "first_epoch", "last_epoch", "rows", "nan_any", "stats", "hist",
)  # fmt: skip


def insert_sql(engine: Engine, table: str, names: tuple[str, ...]) -> str:
    """INSERT in the driver's own parameter style (sqlite3: ?, psycopg: %s) for `executemany`."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    quote = engine.dialect.identifier_preparer.quote
    return f"INSERT INTO {table} ({', '.join(map(quote, names))}) VALUES ({', '.join([mark] * len(names))})"


def chunk_rows(run_id: int, chunk: BatchChunk) -> Iterator[tuple[Any, ...]]:
    """The chunk as StatChunk parameter tuples (CHUNK_COLUMNS order), CHUNK_ROWS batches at most each;
    statistics the database does not know (a newer trainer's) are left out."""
    keep = [j for j, name in enumerate(chunk.columns) if name in _BIT]
    names = ",".join(chunk.columns[j] for j in keep)
    values = np.ascontiguousarray(np.asarray(chunk.values, dtype=np.float64)[:, keep].T)  # (K, N)
    steps = np.asarray(chunk.steps, dtype=np.int64)
    epochs = np.asarray(chunk.epochs, dtype=np.int64)
    hist = np.ascontiguousarray(chunk.class_hist, dtype=np.float32)
    for lo in range(0, len(steps), CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, len(steps))
        yield (
            run_id,
            int(steps[lo]),
            int(steps[hi - 1]),
            hi - lo,
            names,
            steps[lo:hi].tobytes(),
            epochs[lo:hi].tobytes(),
            np.ascontiguousarray(values[:, lo:hi]).tobytes(),
            hist[lo:hi].tobytes(),
        )


@dataclass
class Batches:
    """Decoded batches: steps, epochs (N,), values (N, K) for the requested names (NaN where none),
    `nan` (N, K): a recorded NaN (not a statistic the chunk lacks), hists (N, C) float32 or None."""

    steps: np.ndarray
    epochs: np.ndarray
    values: np.ndarray
    nan: np.ndarray
    hists: list[np.ndarray] | None

    def __len__(self) -> int:
        return len(self.steps)

    def nan_masks(self, names: list[str]) -> np.ndarray:
        """Per batch, bit BATCH_COLUMNS.index(name) set where that statistic is a recorded NaN."""
        return _masks(self.nan, names)

    def hist_array(self) -> np.ndarray:
        """The class shares as one (N, C) array; chunks without them (converted from the oldest
        databases) are NaN."""
        if not self.hists:
            return np.zeros((len(self), 0))
        c = max(h.shape[1] for h in self.hists)
        return np.concatenate([h if h.shape[1] == c else np.full((len(h), c), np.nan) for h in self.hists])


def decode_chunks(
    chunks: Iterable[tuple[Any, ...]], names: list[str], lo: int, hi: int | None, limit: int | None, hist: bool
) -> Batches:
    """(rows, columns, steps, epochs, values[, class_hist]) tuples in step order -> the batches with
    lo < step (<= hi), the first `limit` of them."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
    total = 0
    for row in chunks:
        n, columns, steps_blob, epochs_blob, values_blob = row[:5]
        steps = np.frombuffer(steps_blob, dtype=np.int64)
        keep = steps > lo
        if hi is not None:
            keep &= steps <= hi
        index: np.ndarray | slice = slice(None) if keep.all() else np.flatnonzero(keep)
        have = columns.split(",") if columns else []
        stored = np.frombuffer(values_blob, dtype=np.float64).reshape(len(have), n)
        where = {name: j for j, name in enumerate(have)}
        picked = steps[index]
        values = np.full((len(picked), len(names)), np.nan)
        recorded = np.zeros(len(names), bool)
        for k, name in enumerate(names):
            j = where.get(name)
            if j is not None:
                values[:, k] = stored[j, index]
                recorded[k] = True
        h = None
        if hist:
            blob = row[5]
            h = np.frombuffer(blob, dtype=np.float32).reshape(n, -1)[index] if blob else np.zeros((len(picked), 0))
        parts.append((picked, np.frombuffer(epochs_blob, dtype=np.int64)[index], values, recorded, h))
        total += len(picked)
        if limit is not None and total >= limit:
            break
    if not parts:
        empty = np.zeros(0, np.int64)
        return Batches(empty, empty, np.zeros((0, len(names))), np.zeros((0, len(names)), bool), [] if hist else None)
    steps = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[2] for p in parts])
    nan = np.concatenate([np.isnan(p[2]) & p[3] for p in parts])
    out = Batches(steps, np.concatenate([p[1] for p in parts]), values, nan, [p[4] for p in parts] if hist else None)
    if limit is not None and len(out) > limit:
        out = Batches(
            out.steps[:limit], out.epochs[:limit], out.values[:limit], out.nan[:limit],
            _cut(out.hists, limit) if out.hists is not None else None,
        )  # fmt: skip
    return out


def _cut(hists: list[np.ndarray], limit: int) -> list[np.ndarray]:
    out, left = [], limit
    for h in hists:
        out.append(h[:left])
        left -= len(out[-1])
    return out


def executemany(conn: Any, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """On the raw DBAPI cursor of the connection's transaction: it takes an iterator, SQLAlchemy does not."""
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(sql, rows)
    finally:
        cursor.close()


def full_values(chunk: BatchChunk) -> np.ndarray:
    """The chunk's values over all BATCH_COLUMNS (a column the chunk lacks is NaN without its bit)."""
    if tuple(chunk.columns) == BATCH_COLUMNS:
        return np.asarray(chunk.values, dtype=np.float64)
    values = np.full((len(chunk), len(BATCH_COLUMNS)), np.nan)
    for j, name in enumerate(chunk.columns):
        if name in _BIT:
            values[:, _BIT[name]] = chunk.values[:, j]
    return values


def nan_masks(chunk: BatchChunk) -> np.ndarray:
    """Per batch, bit i set where BATCH_COLUMNS[i] is a recorded NaN (what the rollup keeps)."""
    keep = [j for j, name in enumerate(chunk.columns) if name in _BIT]
    nan = np.isnan(np.asarray(chunk.values, dtype=np.float64)[:, keep])
    return _masks(nan, [chunk.columns[j] for j in keep])


def _masks(nan: np.ndarray, names: list[str]) -> np.ndarray:
    """(N, K) NaN flags over `names` as one int64 bitmask per row, bit i for BATCH_COLUMNS[i]."""
    bits = np.array([1 << _BIT[n] for n in names], dtype=np.int64)
    return (nan * bits).sum(axis=1) if names else np.zeros(len(nan), np.int64)


def merge_chunks(chunks: list[BatchChunk]) -> list[BatchChunk]:
    """Consecutive chunks with the same columns and classes as one: per-chunk costs are paid once."""
    groups: list[list[BatchChunk]] = []
    for chunk in chunks:
        prev = groups[-1][0] if groups else None
        same = (
            prev is not None
            and prev.columns == chunk.columns
            and prev.class_hist.shape[1:] == chunk.class_hist.shape[1:]
        )
        if same:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return [
        group[0]
        if len(group) == 1
        else BatchChunk(
            steps=np.concatenate([c.steps for c in group]),
            epochs=np.concatenate([c.epochs for c in group]),
            values=np.concatenate([c.values for c in group]),
            class_hist=np.concatenate([c.class_hist for c in group]),
            columns=group[0].columns,
        )
        for group in groups
    ]
