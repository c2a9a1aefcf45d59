"""Batch statistics as database rows: one parameter tuple per batch, built fast enough for >100k rows/s.

NaN is stored as NULL with its bit set in `nan_mask` (SQLite turns a bound NaN into NULL anyway);
infinities are stored as they are.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

import numpy as np
from sqlalchemy import Engine

from trainer import BATCH_COLUMNS, BatchChunk

_BIT = {name: i for i, name in enumerate(BATCH_COLUMNS)}

BLOCK_COLUMNS = ("run_id", "level", "first_step", "last_step", "first_epoch", "last_epoch", "rows", "nan_any", "stats")


def insert_sql(engine: Engine, table: str, names: tuple[str, ...]) -> str:
    """INSERT in the driver's own parameter style (sqlite3: ?, psycopg: %s) for `executemany`."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    quote = engine.dialect.identifier_preparer.quote
    return f"INSERT INTO {table} ({', '.join(map(quote, names))}) VALUES ({', '.join([mark] * len(names))})"


def batch_insert_sql(engine: Engine, columns: tuple[str, ...]) -> str:
    return insert_sql(engine, "batchstat", ("run_id", "step", "epoch", "nan_mask", "class_hist", *columns))


def chunk_rows(run_id: int, chunk: BatchChunk) -> tuple[tuple[str, ...], Iterator[tuple[Any, ...]], np.ndarray]:
    """One parameter tuple per batch, made as executemany consumes them (and the nan_mask of each);
    NaN becomes NULL with its bit set."""
    keep = [i for i, name in enumerate(chunk.columns) if name in _BIT]
    columns = tuple(chunk.columns[i] for i in keep)
    values = np.asarray(chunk.values, dtype=np.float64)[:, keep]
    n = len(values)
    nan = np.isnan(values)  # (N, K)
    bits = np.array([1 << _BIT[name] for name in columns], dtype=np.int64)
    masks = (nan * bits).sum(axis=1) if columns else np.zeros(n, np.int64)
    # column lists zipped into row tuples: built in C, one at a time, which is what buys the rows/s
    column_lists = values.T.tolist()
    for j in np.flatnonzero(nan.any(axis=0)).tolist():
        for i in np.flatnonzero(nan[:, j]).tolist():
            column_lists[j][i] = None
    blobs = [row.tobytes() for row in np.ascontiguousarray(chunk.class_hist, dtype=np.float32)]
    steps, epochs = np.asarray(chunk.steps).tolist(), np.asarray(chunk.epochs).tolist()
    rows = zip(repeat(run_id, n), steps, epochs, masks.tolist(), blobs, *column_lists, strict=False)
    return columns, rows, masks


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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Millions of fresh floats and row tuples (none in a cycle) would trigger the cyclic collector
    dozens of times per write; pausing it for the write roughly doubles the rows per second."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
