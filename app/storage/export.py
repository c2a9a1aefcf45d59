"""A run's batch statistics as CSV text, read a few chunks at a time so memory stays flat for any run.

Every stored batch is one line: step, epoch, each statistic of `trainer.BATCH_COLUMNS`, then the predicted
class shares. A recorded NaN is written `NaN`, infinities `inf` / `-inf`; a statistic the batch did not
record (a database written by an older version) is an empty cell.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sqlalchemy import Engine, select
from sqlmodel import Session

from app.storage.chunks import decode_chunks
from app.storage.models import StatChunk
from trainer import BATCH_COLUMNS

CHUNKS_PER_READ = 8  # up to 8 x 1,024 batches decoded at a time


def csv_header(num_classes: int) -> list[str]:
    return ["step", "epoch", *BATCH_COLUMNS, *(f"class_share_{c}" for c in range(num_classes))]


def stats_csv(engine: Engine, run_id: int, num_classes: int) -> Iterator[str]:
    """The CSV text, a header line then one piece per read of a few chunks. Each read is a short
    transaction of its own, after the last step written, so a live run's new chunks are included and
    no read holds the database for the whole download."""
    yield ",".join(csv_header(num_classes)) + "\n"
    names = list(BATCH_COLUMNS)
    t = StatChunk.__table__.c
    picked = [t[name] for name in ("rows", "columns", "steps", "epochs", "values", "class_hist")]
    after = -1
    while True:
        query = (
            select(*picked)
            .where(t["run_id"] == run_id, t["last_step"] > after)
            .order_by(t["first_step"])
            .limit(CHUNKS_PER_READ)
        )
        with Session(engine) as session:
            rows = session.connection().execute(query).all()
        if not rows:
            return
        batches = decode_chunks(rows, names, after, None, None, hist=True)
        if not len(batches):
            return
        hist = batches.hist_array()
        shares = np.full((len(batches), num_classes), np.nan)
        width = min(num_classes, hist.shape[1])
        shares[:, :width] = np.round(hist[:, :width].astype(np.float64), 6)
        cells = [batches.steps.astype(str).tolist(), batches.epochs.astype(str).tolist()]
        cells += [_cells(batches.values[:, k], batches.nan[:, k]) for k in range(len(names))]
        cells += [_cells(shares[:, c], np.zeros(len(batches), bool)) for c in range(num_classes)]
        yield "".join(",".join(line) + "\n" for line in zip(*cells, strict=True))
        after = int(batches.steps[-1])


def _cells(values: np.ndarray, recorded_nan: np.ndarray) -> list[str]:
    """One column's cells: shortest round-trip floats, `NaN` where recorded, empty where not recorded."""
    out = [repr(v) for v in values.tolist()]
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = "NaN" if recorded_nan[i] else ""
    return out
