"""Per-batch statistics computed on the device from the tensors the loss already holds.

Each recorded batch becomes one row of a device buffer; rows reach the host in chunks, copied
asynchronously on CUDA, so no batch forces a host sync.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from trainer.losses import LossParts
from trainer.records import BATCH_COLUMNS, BatchChunk

# Columns filled on the host when a chunk is read back (they are host values already).
HOST_COLUMNS = ("lr", "samples_per_s")
DEVICE_COLUMNS = tuple(c for c in BATCH_COLUMNS if c not in HOST_COLUMNS)
ONE_HOT_THRESHOLD = 0.99


def batch_stats(
    logits: torch.Tensor,
    raw_targets: torch.Tensor,
    parts: LossParts,
    grad_norm: torch.Tensor,
    max_grad_norm: float | None,
    head_weight: torch.Tensor,
) -> torch.Tensor:
    """One row: DEVICE_COLUMNS then the predicted-class histogram, as a (K + C,) device tensor."""
    z = logits.detach()  # (B, C) raw logits
    p = parts.probs.detach()
    h = parts.entropy.detach()  # (B,)
    t = parts.targets  # (B, C) smoothed, no grad
    b, c = z.shape
    zmax, zmin = z.max(), z.min()
    top2 = z.topk(2, dim=1).values if c > 1 else torch.cat([z, z], dim=1)
    maxprob = p.max(dim=1).values  # (B,)
    # histogram by scatter_add: bincount / one_hot read the max back to the host on CUDA
    hist = torch.zeros(c, device=z.device, dtype=p.dtype).scatter_add_(0, p.argmax(dim=1), torch.ones_like(maxprob)) / b
    k = max(1, math.ceil(0.1 * b))
    values = {
        **{name: v.detach() for name, v in parts.terms().items()},
        "logit_max": zmax,
        "logit_min": zmin,
        "logit_range": zmax - zmin,
        "logit_mean": z.mean(),
        "logit_std": z.std(correction=0),
        "logit_margin": (top2[:, 0] - top2[:, 1]).mean(),
        "entropy_mean": h.mean(),
        "entropy_min": h.min(),
        "entropy_p10": h.kthvalue(k).values,
        "target_entropy_mean": parts.target_entropy.mean(),
        "maxprob_mean": maxprob.mean(),
        "onehot_frac": (maxprob > ONE_HOT_THRESHOLD).float().mean(),
        "target_onehot_frac": (raw_targets.max(dim=1).values > ONE_HOT_THRESHOLD).float().mean(),
        "hist_top_share": hist.max(),
        "hist_eff_classes": torch.exp(-torch.special.xlogy(hist, hist).sum()),
        "output_diversity": p.std(dim=0, correction=0).mean(),
        "target_diversity": t.std(dim=0, correction=0).mean(),
        "grad_norm": grad_norm.detach(),
        "clipped": (grad_norm > max_grad_norm).float() if max_grad_norm is not None else torch.zeros_like(zmax),
        "head_weight_norm": head_weight.detach().norm(),
    }
    row = torch.stack([values[name].to(p.dtype) for name in DEVICE_COLUMNS])
    return torch.cat([row, hist])


@dataclass
class _Pending:
    host: torch.Tensor  # (n, K + C) on the host, filled asynchronously on CUDA
    event: torch.cuda.Event | None
    steps: list[int]
    epochs: list[int]
    lrs: list[float]
    samples: int
    seconds: float


class StatsRecorder:
    """Collects per-batch rows in a device buffer and hands them back as `BatchChunk`s.

    Rows are written into the buffer by device ops only. `flush()` starts one copy of the filled
    rows to (pinned) host memory; `ready()` returns the chunks whose copy has finished, asking the
    device without waiting (`Event.query`), so the training loop never blocks on statistics.
    Writes after a flush are ordered after its copy on the same stream, so one buffer suffices.
    """

    def __init__(self, num_classes: int, device: torch.device, capacity: int) -> None:
        self.width = len(DEVICE_COLUMNS) + num_classes
        self.num_classes = num_classes
        self.device = device
        self.capacity = capacity
        self._buf = torch.empty((capacity, self.width), device=device)
        self._n = 0
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._lrs: list[float] = []
        self._samples = 0
        self._since = time.perf_counter()
        self._pending: deque[_Pending] = deque()

    @property
    def full(self) -> bool:
        return self._n >= self.capacity

    def record(self, row: torch.Tensor, step: int, epoch: int, lr: float, batch_size: int) -> None:
        self._buf[self._n].copy_(row)
        self._n += 1
        self._steps.append(step)
        self._epochs.append(epoch)
        self._lrs.append(lr)
        self._samples += batch_size

    def flush(self) -> None:
        if self._n == 0:
            return
        now = time.perf_counter()
        rows = self._buf[: self._n]
        event = None
        if self.device.type == "cuda":
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = rows.clone()
        self._pending.append(
            _Pending(host, event, self._steps, self._epochs, self._lrs, self._samples, now - self._since)
        )
        self._n, self._steps, self._epochs, self._lrs, self._samples, self._since = 0, [], [], [], 0, now

    def ready(self, wait: bool = False) -> list[BatchChunk]:
        """Chunks whose copy has landed; with `wait`, all of them (a sync point, used at the end)."""
        out = []
        while self._pending and (wait or self._pending[0].event is None or self._pending[0].event.query()):
            p = self._pending.popleft()
            if p.event is not None:
                p.event.synchronize()  # already complete unless `wait`
            out.append(self._to_chunk(p))
        return out

    def _to_chunk(self, p: _Pending) -> BatchChunk:
        data = p.host.double().numpy()
        k = len(DEVICE_COLUMNS)
        n = len(p.steps)
        values = np.empty((n, len(BATCH_COLUMNS)))
        for j, name in enumerate(BATCH_COLUMNS):
            if name in DEVICE_COLUMNS:
                values[:, j] = data[:, DEVICE_COLUMNS.index(name)]
        values[:, BATCH_COLUMNS.index("lr")] = p.lrs
        values[:, BATCH_COLUMNS.index("samples_per_s")] = p.samples / p.seconds if p.seconds > 0 else np.nan
        return BatchChunk(
            steps=np.asarray(p.steps, dtype=np.int64),
            epochs=np.asarray(p.epochs, dtype=np.int64),
            values=values,
            class_hist=data[:, k:].copy(),
        )
