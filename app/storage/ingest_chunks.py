"""An ingest request's chunk as a `BatchChunk`: columnar JSON lists, or packed base64 float64 arrays (what the
client library sends), checked alike: a 422 that names the field, never a chunk stored half right."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from app.errors import InputError
from app.storage.ingest_models import ChunkIn, PackedStats
from trainer import BATCH_COLUMNS, BatchChunk

MAX_CLASSES = 1000
_KNOWN = ", ".join(BATCH_COLUMNS)


def chunk_from_body(body: ChunkIn, num_classes: int) -> BatchChunk:
    """The request as a BatchChunk (the columns it holds, in BATCH_COLUMNS order); a 422 naming the field
    for a wrong length, an unknown column, steps that do not increase or a class count not the run's."""
    n = len(body.steps)
    if len(body.epochs) != n:
        raise InputError.at(["body", "epochs"], f"has {len(body.epochs)} entries for {n} steps: one per step")
    steps = np.asarray(body.steps, dtype=np.int64)
    down = np.flatnonzero(np.diff(steps) <= 0)
    if down.size:
        i = int(down[0]) + 1
        raise InputError.at(["body", "steps", i], f"steps must increase: step {steps[i - 1]} is followed by {steps[i]}")
    if body.packed is not None:
        if body.values is not None or body.class_hist is not None:
            raise InputError.at(["body", "packed"], "send either packed or values and class_hist, not both")
        named, values, hist = _unpacked(body.packed, n, num_classes)
    else:
        named, values, hist = _listed(body, n, num_classes)
    columns = tuple(name for name in BATCH_COLUMNS if name in named)
    order = [named.index(name) for name in columns]
    return BatchChunk(
        steps=steps,
        epochs=np.asarray(body.epochs, dtype=np.int64),
        values=np.ascontiguousarray(values[order].T),
        class_hist=hist,
        columns=columns,
    )


def _check_columns(names: list[str], where: list[str | int]) -> None:
    if not names:
        raise InputError.at(where, f"holds no statistic; known columns: {_KNOWN}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name not in BATCH_COLUMNS:
            raise InputError.at(
                [*where, i if where[-1] == "columns" else name], f"unknown column {name!r}; known columns: {_KNOWN}"
            )
        if name in seen:
            raise InputError.at([*where, i], f"column {name!r} is named twice")
        seen.add(name)


def _classes(num_classes: int, first_row: int, where: list[str | int]) -> int:
    classes = num_classes or first_row
    if not 2 <= classes <= MAX_CLASSES:
        raise InputError.at(where, f"holds {first_row} class shares a step: a run has 2 to {MAX_CLASSES} classes")
    return classes


def _listed(body: ChunkIn, n: int, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(column names, (K, n) values, (n, C) shares) of the JSON lists."""
    if body.values is None or body.class_hist is None:
        missing = "values" if body.values is None else "class_hist"
        raise InputError.at(["body", missing], "is required (or send packed instead of values and class_hist)")
    names = list(body.values)
    _check_columns(names, ["body", "values"])
    for name, seq in body.values.items():
        if len(seq) != n:
            raise InputError.at(["body", "values", name], f"has {len(seq)} values for {n} steps: one per step")
    if len(body.class_hist) != n:
        raise InputError.at(["body", "class_hist"], f"has {len(body.class_hist)} entries for {n} steps: one per step")
    classes = _classes(num_classes, len(body.class_hist[0]), ["body", "class_hist", 0])
    for i, shares in enumerate(body.class_hist):
        if len(shares) != classes:
            whose = f"the run's {classes}" if num_classes else f"{classes} (the first row's)"
            raise InputError.at(["body", "class_hist", i], f"has {len(shares)} class shares for {whose} classes")
    values = np.asarray([body.values[name] for name in names], dtype=np.float64)  # "NaN" -> nan
    return names, values, np.asarray(body.class_hist, dtype=np.float64)


def _floats(text: str, where: list[str | int]) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError.at(where, f"is not base64: {exc}") from None
    if len(raw) % 8:
        raise InputError.at(where, f"holds {len(raw)} bytes, not a whole number of float64 values")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


def _unpacked(packed: PackedStats, n: int, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(column names, (K, n) values, (n, C) shares) of the base64 arrays."""
    names = list(packed.columns)
    _check_columns(names, ["body", "packed", "columns"])
    values = _floats(packed.values, ["body", "packed", "values"])
    if values.size != len(names) * n:
        raise InputError.at(
            ["body", "packed", "values"],
            f"holds {values.size} values for {len(names)} columns x {n} steps: one per column and step",
        )
    shares = _floats(packed.class_hist, ["body", "packed", "class_hist"])
    per_step = shares.size // n if shares.size % n == 0 else -1
    if per_step < 0 or (num_classes and per_step != num_classes):
        whose = f"the run's {num_classes}" if num_classes else "a whole number of"
        raise InputError.at(
            ["body", "packed", "class_hist"], f"holds {shares.size} class shares for {n} steps of {whose} classes"
        )
    _classes(num_classes, per_step, ["body", "packed", "class_hist"])
    hist = shares.reshape(n, per_step)
    bad = np.flatnonzero(~((hist >= 0.0) & (hist <= 1.0)).all(axis=1))  # NaN fails too
    if bad.size:
        i = int(bad[0])
        raise InputError.at(["body", "packed", "class_hist"], f"step {i} of the chunk holds a share outside [0, 1]")
    return names, values.reshape(len(names), n), hist
