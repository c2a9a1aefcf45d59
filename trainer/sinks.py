"""Sinks receive what `train()` measures: the protocol, an in-memory sink and a JSON-lines file sink."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from trainer.records import BatchChunk, CollapseWarning, EvalRecord, RunInfo, TrainResult


class Sink(Protocol):
    """Called from the training thread; a sink that does slow I/O should queue and return."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_batches(self, chunk: BatchChunk) -> None: ...
    def on_eval(self, record: EvalRecord) -> None: ...
    def on_warning(self, warning: CollapseWarning) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


class NullSink:
    """Discards everything; the base of the other sinks."""

    def on_start(self, info: RunInfo) -> None:
        pass

    def on_batches(self, chunk: BatchChunk) -> None:
        pass

    def on_eval(self, record: EvalRecord) -> None:
        pass

    def on_warning(self, warning: CollapseWarning) -> None:
        pass

    def on_end(self, result: TrainResult) -> None:
        pass


class ListSink(NullSink):
    """Keeps everything in memory; `column(name)` concatenates one statistic over all chunks."""

    def __init__(self) -> None:
        self.info: RunInfo | None = None
        self.chunks: list[BatchChunk] = []
        self.evals: list[EvalRecord] = []
        self.warnings: list[CollapseWarning] = []
        self.result: TrainResult | None = None

    def on_start(self, info: RunInfo) -> None:
        self.info = info

    def on_batches(self, chunk: BatchChunk) -> None:
        self.chunks.append(chunk)

    def on_eval(self, record: EvalRecord) -> None:
        self.evals.append(record)

    def on_warning(self, warning: CollapseWarning) -> None:
        self.warnings.append(warning)

    def on_end(self, result: TrainResult) -> None:
        self.result = result

    @property
    def steps(self) -> np.ndarray:
        return np.concatenate([c.steps for c in self.chunks]) if self.chunks else np.zeros(0, np.int64)

    def column(self, name: str) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0)
        return np.concatenate([c.column(name) for c in self.chunks])

    def class_hist(self) -> np.ndarray:
        return np.concatenate([c.class_hist for c in self.chunks])


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


class JsonlSink(NullSink):
    """Appends one JSON object per event (and one per batch) to a file; flushed at each chunk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")

    def _write(self, event: str, payload: dict[str, Any]) -> None:
        self._fh.write(json.dumps({"event": event, **_jsonable(payload)}) + "\n")

    def on_start(self, info: RunInfo) -> None:
        self._write("start", dataclasses.asdict(info))
        self._fh.flush()

    def on_batches(self, chunk: BatchChunk) -> None:
        for i in range(len(chunk)):
            row = dict(zip(chunk.columns, chunk.values[i].tolist(), strict=True))
            row.update(step=int(chunk.steps[i]), epoch=int(chunk.epochs[i]), class_hist=chunk.class_hist[i].tolist())
            self._write("batch", row)
        self._fh.flush()

    def on_eval(self, record: EvalRecord) -> None:
        self._write("eval", dataclasses.asdict(record))
        self._fh.flush()

    def on_warning(self, warning: CollapseWarning) -> None:
        self._write("warning", dataclasses.asdict(warning))
        self._fh.flush()

    def on_end(self, result: TrainResult) -> None:
        self._write("end", dataclasses.asdict(result))
        self._fh.close()
