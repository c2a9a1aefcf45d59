"""Scalars of the user's own (the client's `log_batch(..., name=value)`): stored a chunk per name per request
(ScalarChunk), read back per name, downsampled like the statistics so a spike survives (min and max of
each bucket, in step order)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from sqlalchemy import Connection, func, insert, select
from sqlmodel import Session, SQLModel

from app.errors import Conflict, InputError
from app.storage.crud import get_run
from app.storage.ingest_models import MAX_SCALAR_NAMES, ScalarsIn
from app.storage.models import ScalarChunk


class ScalarSeries(SQLModel):
    steps: list[int]
    values: list[float | None]  # null where the value is not finite (counted in `nonfinite`)
    nonfinite: int = 0
    points: int  # values stored, before downsampling


class ScalarsPublic(SQLModel):
    run_id: int
    names: list[str]
    series: dict[str, ScalarSeries]


def append_scalars(conn: Connection, run_id: int, body: ScalarsIn) -> bool:
    """Store each name's values after its stored steps; whether anything new was stored. The run is
    locked and checked running by the caller (app.storage.ingest)."""
    known = set(conn.execute(select(ScalarChunk.name).where(ScalarChunk.run_id == run_id).distinct()).scalars())
    new = set(body.series) - known
    if len(known) + len(new) > MAX_SCALAR_NAMES:
        more = f"a run holds at most {MAX_SCALAR_NAMES} scalars; {sorted(new)} would make more"
        raise InputError.at(["body", "series"], more)
    rows, repeats = [], 0
    for name, series in body.series.items():
        if len(series.values) != len(series.steps):
            counts = f"has {len(series.values)} values for {len(series.steps)} steps"
            raise InputError.at(["body", "series", name, "values"], counts)
        steps = np.asarray(series.steps, dtype=np.int64)
        if np.any(np.diff(steps) <= 0):
            raise InputError.at(["body", "series", name, "steps"], "must increase strictly")
        values = np.asarray([float(v) for v in series.values], dtype=np.float64)  # "NaN" -> nan
        last = conn.execute(
            select(func.max(ScalarChunk.last_step)).where(ScalarChunk.run_id == run_id, ScalarChunk.name == name)
        ).scalar()
        if last is not None and steps[0] <= last:
            held = conn.execute(
                select(ScalarChunk.steps, ScalarChunk.values).where(
                    ScalarChunk.run_id == run_id, ScalarChunk.name == name, ScalarChunk.first_step == int(steps[0])
                )
            ).first()
            if held is not None and held.steps == steps.tobytes() and held.values == values.tobytes():
                repeats += 1
                continue
            raise Conflict(f"scalar {name!r}: steps from {steps[0]} overlap the stored ones (up to {last}) and differ")
        rows.append(
            {"run_id": run_id, "name": name, "first_step": int(steps[0]), "last_step": int(steps[-1]),
             "steps": steps.tobytes(), "values": values.tobytes()}
        )  # fmt: skip
    if rows:
        conn.execute(insert(ScalarChunk), rows)
    return bool(rows)


def read_scalars(*, session: Session, run_id: int, max_points: int) -> ScalarsPublic:
    get_run(session=session, run_id=run_id)
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for name, steps, values in session.execute(
        select(ScalarChunk.name, ScalarChunk.steps, ScalarChunk.values)
        .where(ScalarChunk.run_id == run_id)
        .order_by(ScalarChunk.name, ScalarChunk.first_step)
    ).all():
        held = parts.setdefault(name, ([], []))
        held[0].append(np.frombuffer(steps, dtype=np.int64))
        held[1].append(np.frombuffer(values, dtype=np.float64))
    series = {}
    for name, (steps, values) in parts.items():
        s, v = np.concatenate(steps), np.concatenate(values)
        shown_s, shown_v = downsample(s, v, max_points)
        series[name] = ScalarSeries(
            steps=shown_s.tolist(),
            values=[x if math.isfinite(x) else None for x in shown_v.tolist()],
            nonfinite=int((~np.isfinite(v)).sum()),
            points=len(v),
        )
    return ScalarsPublic(run_id=run_id, names=sorted(series), series=series)


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points: per bucket its min and max (a NaN is kept as a point of its own, so a
    divergence shows), in step order."""
    if len(steps) <= max_points:
        return steps, values
    buckets = max(1, max_points // 3)  # up to three points a bucket: min, max and a first non-finite one
    edges = np.linspace(0, len(steps), buckets + 1).astype(np.int64)
    keep: list[int] = []
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        chunk = values[lo:hi]
        finite = np.isfinite(chunk)
        if not finite.any():
            keep.append(int(lo))
            continue
        masked = np.where(finite, chunk, np.nan)
        picked = {int(lo + np.nanargmin(masked)), int(lo + np.nanargmax(masked))}
        if not finite.all():
            picked.add(int(lo + np.flatnonzero(~finite)[0]))
        keep.extend(sorted(picked))
    index = np.asarray(keep, dtype=np.int64)
    return steps[index], values[index]
