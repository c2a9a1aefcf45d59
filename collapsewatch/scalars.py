"""Scalars of the user's own (`run.log_batch(..., aux_loss=aux, accuracy=0.9)`), recorded beside the
statistics: numbers as they are, 0-d tensors by reference, stacked per chunk on their device and shipped
to the host without waiting (trainer.host_copies), so they force no host sync either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer import BATCH_COLUMNS
from trainer.host_copies import HostCopies

MAX_SCALARS = 32  # names per run
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
RESERVED = frozenset(BATCH_COLUMNS)


@dataclass
class ScalarChunk:
    """Per name, the steps it was logged at and its values there (NaN and infinities as they are)."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (steps int64, values float64)

    def body(self) -> dict[str, Any]:
        """The body of POST /api/ingest/runs/{id}/scalars."""
        from collapsewatch.transport import jsonable

        return {"series": {k: {"steps": s.tolist(), "values": jsonable(v)} for k, (s, v) in self.series.items()}}


def check_names(scalars: dict[str, Any], known: set[str]) -> None:
    """A clear error for a name that cannot be stored, or one too many."""
    for name, value in scalars.items():
        if not NAME.match(name):
            raise ValueError(
                f"scalar name {name!r}: letters, digits, '_' and '.', at most 64, not starting with a digit"
            )
        if name in RESERVED:
            raise ValueError(f"{name!r} is a statistic collapsewatch records itself: give your scalar another name")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"scalar {name!r} must be a number or a 1-element tensor, got shape {tuple(value.shape)}"
                )
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"scalar {name!r} must be a number or a 1-element tensor, got {type(value).__name__}")
    new = set(scalars) - known
    if len(known) + len(new) > MAX_SCALARS:
        raise ValueError(f"at most {MAX_SCALARS} scalars of your own per run; {sorted(new)} would make more")


class ScalarRecorder:
    """What `log_batch` hands over per step, out as ScalarChunks in order (`ready()`)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._steps: list[int] = []
        self._values: list[dict[str, Any]] = []
        self._copies: HostCopies[dict[str, Any]] = HostCopies()

    def record(self, step: int, scalars: dict[str, Any]) -> None:
        check_names(scalars, self.names)
        self.names.update(scalars)
        self._steps.append(step)
        self._values.append({k: v.detach() if isinstance(v, torch.Tensor) else float(v) for k, v in scalars.items()})

    def flush(self) -> None:
        if not self._steps:
            return
        numbers: dict[str, tuple[list[int], list[float]]] = {}
        tensors: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
        for step, values in zip(self._steps, self._values, strict=True):
            for name, value in values.items():
                into = tensors if isinstance(value, torch.Tensor) else numbers
                steps, vals = into.setdefault(name, ([], []))
                steps.append(step)
                vals.append(value)
        self._steps, self._values = [], []
        series = {k: (np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64)) for k, (s, v) in numbers.items()}
        with torch.no_grad():  # one (k,) tensor per name, on its device
            stacked = tuple(
                torch.stack([v.reshape(()).to(torch.float64) for v in vals]) for _, vals in tensors.values()
            )
        if len({t.device for t in stacked}) > 1:
            stacked = tuple(t.cpu() for t in stacked)  # scalars on several devices: rare, and a sync
        meta = {"numbers": series, "names": list(tensors), "steps": [steps for steps, _ in tensors.values()]}
        # numbers alone travel the same queue (an empty CPU tensor), so chunks come out in step order
        self._copies.push(stacked or (torch.zeros(0),), meta)

    def ready(self, wait: bool = False) -> list[ScalarChunk]:
        out = []
        for arrays, meta in self._copies.ready(wait):
            series = dict(meta["numbers"])
            names = meta["names"]
            for name, steps, values in zip(names, meta["steps"], arrays[: len(names)], strict=True):
                steps, values = np.asarray(steps, dtype=np.int64), values.astype(np.float64)
                if name in series:  # logged as a number at some steps and a tensor at others
                    steps, values = np.concatenate([series[name][0], steps]), np.concatenate([series[name][1], values])
                    order = np.argsort(steps, kind="stable")
                    steps, values = steps[order], values[order]
                series[name] = (steps, values)
            out.append(ScalarChunk(series))
        return out
