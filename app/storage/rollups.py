"""Min/max summaries of consecutive batches, so a chart of a million batches reads thousands of rows.

A `Segments` holds, per stretch of batches, each column's min and max and the steps where they
occur, and the sum of the batches' predicted-class shares (so a chart bucket shows their mean).
The sink rolls rows up into blocks of 16, 256 and 4096 batches as it writes them (`Rollup`); the
stats endpoint merges blocks and raw rows into chart buckets with `combine`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FANOUT = 16
LEVELS = 3  # blocks of 16, 256 and 4096 batches
_NO_STEP = np.iinfo(np.int64).max


def level_rows(level: int) -> int:
    return FANOUT ** (level + 1)


@dataclass
class Segments:
    """S consecutive stretches of batches (ascending steps) over K columns; NaN is ignored by min/max
    and recorded in `nan_any` (bit k: column k held a NaN somewhere in the stretch)."""

    first_step: np.ndarray  # (S,) int64
    last_step: np.ndarray  # (S,) int64
    first_epoch: np.ndarray  # (S,) int64
    last_epoch: np.ndarray  # (S,) int64
    rows: np.ndarray  # (S,) int64 batches in the stretch
    nan_any: np.ndarray  # (S,) int64 bitmask
    mins: np.ndarray  # (S, K) float64; NaN when the column has no number in the stretch
    maxs: np.ndarray  # (S, K)
    argmin: np.ndarray  # (S, K) int64 step of the (first) minimum
    argmax: np.ndarray  # (S, K) int64 step of the (first) maximum
    hist: np.ndarray  # (S, C) float64 sum of the batches' class shares; NaN where not stored

    def __len__(self) -> int:
        return len(self.first_step)

    def take(self, index: np.ndarray | slice) -> Segments:
        return Segments(*(getattr(self, f)[index] for f in _FIELDS))

    @staticmethod
    def concat(parts: list[Segments], k: int) -> Segments:
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty_segments(k)
        c = max(p.hist.shape[1] for p in parts)  # blocks of an older version have no histogram
        parts = [p if p.hist.shape[1] == c else replace(p, hist=np.full((len(p), c), np.nan)) for p in parts]
        return Segments(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = (
    "first_step",
    "last_step",
    "first_epoch",
    "last_epoch",
    "rows",
    "nan_any",
    "mins",
    "maxs",
    "argmin",
    "argmax",
    "hist",
)


def empty_segments(k: int) -> Segments:
    ints = np.zeros(0, np.int64)
    return Segments(
        ints,
        ints,
        ints,
        ints,
        ints,
        ints,
        np.zeros((0, k)),
        np.zeros((0, k)),
        *[np.zeros((0, k), np.int64)] * 2,
        np.zeros((0, 0)),
    )


def from_rows(
    steps: np.ndarray, epochs: np.ndarray, values: np.ndarray, nan_mask: np.ndarray, hists: np.ndarray
) -> Segments:
    """Every row its own stretch: min = max = the value, at its own step; hists (N, C) class shares."""
    steps = np.asarray(steps, np.int64)
    epochs = np.asarray(epochs, np.int64)
    values = np.asarray(values, np.float64)
    at = np.repeat(steps[:, None], values.shape[1], axis=1)
    return Segments(
        steps,
        steps,
        epochs,
        epochs,
        np.ones(len(steps), np.int64),
        np.asarray(nan_mask, np.int64),
        values,
        values,
        at,
        at.copy(),
        np.asarray(hists, np.float64).reshape(len(steps), np.shape(hists)[-1] if np.ndim(hists) == 2 else 0),
    )


def combine(seg: Segments, group: np.ndarray) -> Segments:
    """Merge runs of equal, ascending `group` ids into one stretch each."""
    if len(seg) == 0:
        return seg
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(seg)] - 1
    ids = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(seg)]))
    # fmin/fmax skip NaN, so one NaN batch never hides the spike beside it
    mins = np.fmin.reduceat(seg.mins, starts, axis=0)
    maxs = np.fmax.reduceat(seg.maxs, starts, axis=0)
    argmin = np.minimum.reduceat(np.where(seg.mins == mins[ids], seg.argmin, _NO_STEP), starts, axis=0)
    argmax = np.minimum.reduceat(np.where(seg.maxs == maxs[ids], seg.argmax, _NO_STEP), starts, axis=0)
    first = seg.first_step[starts]
    argmin = np.where(argmin == _NO_STEP, first[:, None], argmin)
    argmax = np.where(argmax == _NO_STEP, first[:, None], argmax)
    return Segments(
        first_step=first,
        last_step=seg.last_step[ends],
        first_epoch=seg.first_epoch[starts],
        last_epoch=seg.last_epoch[ends],
        rows=np.add.reduceat(seg.rows, starts),
        nan_any=np.bitwise_or.reduceat(seg.nan_any, starts),
        mins=mins,
        maxs=maxs,
        argmin=argmin,
        argmax=argmax,
        hist=np.add.reduceat(seg.hist, starts, axis=0) if seg.hist.shape[1] else np.zeros((len(starts), 0)),
    )


def encode_stats(seg: Segments) -> list[bytes]:
    """One blob per stretch: float64 (4, K) of min, max, step of min, step of max."""
    packed = np.stack([seg.mins, seg.maxs, seg.argmin.astype(np.float64), seg.argmax.astype(np.float64)], axis=1)
    return [row.tobytes() for row in np.ascontiguousarray(packed)]


def decode_stats(blobs: list[bytes], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `encode_stats`; blobs written with fewer columns (an older trainer) are padded with NaN."""
    out = np.full((len(blobs), 4, k), np.nan)
    for width in {len(b) // 32 for b in blobs}:
        rows = [i for i, b in enumerate(blobs) if len(b) // 32 == width]
        arr = np.frombuffer(b"".join(blobs[i] for i in rows), dtype=np.float64).reshape(len(rows), 4, width)
        out[rows, :, : min(width, k)] = arr[:, :, :k]
    steps = np.nan_to_num(out[:, 2:], nan=0).astype(np.int64)
    return out[:, 0], out[:, 1], steps[:, 0], steps[:, 1]


def encode_hists(seg: Segments) -> list[bytes]:
    """One blob per stretch: float64 (C,) sums of class shares."""
    return [row.tobytes() for row in np.ascontiguousarray(seg.hist, dtype=np.float64)]


def decode_hists(blobs: list[bytes | None]) -> np.ndarray:
    """Inverse of `encode_hists`: (S, C), NaN rows for blocks written without one (an older version)."""
    c = max((len(b or b"") // 8 for b in blobs), default=0)
    out = np.full((len(blobs), c), np.nan)
    for i, blob in enumerate(blobs):
        if blob and len(blob) // 8 == c:
            out[i] = np.frombuffer(blob, dtype=np.float64)
    return out


def block_rows(
    steps: np.ndarray, epochs: np.ndarray, values: np.ndarray, masks: np.ndarray, hists: np.ndarray
) -> Segments:
    """Consecutive groups of FANOUT rows (len(steps) a multiple of it) as stretches, by reshaping:
    several times cheaper than `combine` over one-row stretches, and this runs on every write."""
    nb, k = len(steps) // FANOUT, values.shape[1]
    v = values.reshape(nb, FANOUT, k)
    nan = np.isnan(v)
    at = np.broadcast_to(steps.reshape(nb, FANOUT, 1), v.shape)
    # NaN is skipped: it loses to every number when looking for the extremes
    argmin = np.take_along_axis(at, np.argmin(np.where(nan, np.inf, v), axis=1)[:, None], axis=1)[:, 0]
    argmax = np.take_along_axis(at, np.argmax(np.where(nan, -np.inf, v), axis=1)[:, None], axis=1)[:, 0]
    s, e = steps.reshape(nb, FANOUT), epochs.reshape(nb, FANOUT)
    return Segments(
        first_step=s[:, 0].copy(),
        last_step=s[:, -1].copy(),
        first_epoch=e[:, 0].copy(),
        last_epoch=e[:, -1].copy(),
        rows=np.full(nb, FANOUT, np.int64),
        nan_any=np.bitwise_or.reduce(masks.reshape(nb, FANOUT), axis=1),
        mins=np.fmin.reduce(v, axis=1),
        maxs=np.fmax.reduce(v, axis=1),
        argmin=argmin,
        argmax=argmax,
        hist=hists.reshape(nb, FANOUT, -1).sum(axis=1),
    )


class Rollup:
    """Turns a run's rows, from its first, into complete blocks at every level; incomplete ones wait
    in memory (lost with the process, which is fine: readers fall back to finer blocks and raw rows)."""

    def __init__(self, k: int, c: int) -> None:
        self.k = k
        self.rows = (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k)), np.zeros(0, np.int64), np.zeros((0, c))
        )  # fmt: skip
        self.emitted = [0] * LEVELS  # blocks written so far, per level
        self.pending = [empty_segments(k) for _ in range(LEVELS)]  # [level]: blocks of level - 1

    def add(
        self, steps: np.ndarray, epochs: np.ndarray, values: np.ndarray, masks: np.ndarray, hists: np.ndarray
    ) -> list[tuple[int, Segments]]:
        """Feed the next rows (all BATCH_COLUMNS, NaN kept; class shares (N, C)); returns the (level,
        blocks) they complete."""
        rows = [
            np.concatenate([old, np.asarray(new, old.dtype)])
            for old, new in zip(self.rows, (steps, epochs, values, masks, hists), strict=True)
        ]
        n = len(rows[0]) // FANOUT * FANOUT
        self.rows = tuple(a[n:] for a in rows)  # type: ignore[assignment]
        if not n:
            return []
        blocks = block_rows(*(a[:n] for a in rows))
        done = [(0, blocks)]
        self.emitted[0] += len(blocks)
        for level in range(1, LEVELS):
            items = Segments.concat([self.pending[level], blocks], self.k)
            complete = (
                self.emitted[level - 1] // FANOUT * FANOUT - self.emitted[level] * FANOUT
            )  # items that fill blocks
            self.pending[level] = items.take(slice(complete, None))
            if complete <= 0:
                break
            blocks = combine(items.take(slice(0, complete)), np.arange(complete) // FANOUT)
            self.emitted[level] += len(blocks)
            done.append((level, blocks))
        return done
