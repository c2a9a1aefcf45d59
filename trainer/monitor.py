"""Per-batch statistics at the cost of a few copies per batch.

Each step hands over what the loss already holds (raw logits, targets, the loss terms, grad norm,
head weight norm) by reference: no copy, no kernel. Every statistic is then computed for a whole
chunk of batches at once, vectorised over the batch axis, and read back asynchronously on CUDA,
so no batch forces a host sync and the per-batch kernel count stays at one (the head norm).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.records import BATCH_COLUMNS, BatchChunk

ONE_HOT_THRESHOLD = 0.99
# Written by the step itself, in this order; everything else is derived per chunk.
STEP_COLUMNS = ("loss", "loss_ce", "loss_entropy", "loss_final_l2", "grad_norm", "head_weight_norm")
HOST_COLUMNS = ("lr", "samples_per_s")


def chunk_stats(
    logits: torch.Tensor,
    raw_targets: torch.Tensor,
    step_values: torch.Tensor,
    *,
    temperature: float,
    label_smoothing: float,
    max_grad_norm: float | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Statistics of n batches: logits and targets (n, B, C), step_values (n, len(STEP_COLUMNS)).

    Returns ({column: (n,)}, predicted-class histogram (n, C)). Temperature and smoothing are
    applied exactly as in the loss (trainer/losses.py), so the entropy is the one the penalty saw.
    """
    n, b, c = logits.shape
    z = logits.double()
    t = raw_targets.double()
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / c
    log_p = F.log_softmax(z / temperature, dim=-1)
    p = log_p.exp()
    h = -(p * log_p).sum(-1)  # (n, B)
    maxprob, pred = p.max(-1)  # (n, B)
    # histogram by scatter_add: bincount / one_hot read the max back to the host on CUDA
    hist = torch.zeros(n, c, dtype=z.dtype, device=z.device).scatter_add_(1, pred, torch.ones_like(maxprob)) / b
    top2 = z.topk(2, dim=-1).values if c > 1 else torch.cat([z, z], dim=-1)
    flat = z.reshape(n, -1)
    zmax, zmin = flat.max(1).values, flat.min(1).values
    grad_norm = step_values[:, STEP_COLUMNS.index("grad_norm")].double()
    stats = {name: step_values[:, j].double() for j, name in enumerate(STEP_COLUMNS)}
    stats |= {
        "logit_max": zmax,
        "logit_min": zmin,
        "logit_range": zmax - zmin,
        "logit_mean": flat.mean(1),
        "logit_std": flat.std(1, correction=0),
        "logit_margin": (top2[..., 0] - top2[..., 1]).mean(1),
        "entropy_mean": h.mean(1),
        "entropy_min": h.min(1).values,
        "entropy_p10": h.kthvalue(max(1, math.ceil(0.1 * b)), dim=1).values,
        "target_entropy_mean": -torch.special.xlogy(t, t).sum(-1).mean(1),
        "maxprob_mean": maxprob.mean(1),
        "onehot_frac": (maxprob > ONE_HOT_THRESHOLD).double().mean(1),
        "target_onehot_frac": (raw_targets.amax(-1) > ONE_HOT_THRESHOLD).double().mean(1),
        "hist_top_share": hist.max(1).values,
        "hist_eff_classes": torch.exp(-torch.special.xlogy(hist, hist).sum(1)),
        "output_diversity": p.std(1, correction=0).mean(-1),
        "target_diversity": t.std(1, correction=0).mean(-1),
        "clipped": (grad_norm > max_grad_norm).double() if max_grad_norm is not None else torch.zeros_like(zmax),
    }
    return stats, hist


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
    """Collects per-batch tensors on the device and hands back `BatchChunk`s of statistics.

    `record()` only keeps references to tensors the step created anyway (no copy, no kernel).
    `flush()` stacks them, computes the chunk's statistics and starts one copy to pinned host
    memory; `ready()` returns the chunks whose copy has landed, asking the device without waiting
    (`Event.query`). A batch of another size (the last of an epoch) flushes first, so a chunk
    always stacks into (n, B, C).
    """

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        capacity: int,
        *,
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        self.num_classes, self.device, self.capacity = num_classes, device, capacity
        self._params = {"temperature": temperature, "label_smoothing": label_smoothing, "max_grad_norm": max_grad_norm}
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._batch = 0
        self._n = 0
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._lrs: list[float] = []
        self._since = time.perf_counter()
        self._pending: deque[_Pending] = deque()

    @property
    def full(self) -> bool:
        return self._n >= self.capacity

    def record(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        step_values: list[torch.Tensor],
        step: int,
        epoch: int,
        lr: float,
    ) -> None:
        """logits, targets (B, C) and the 0-d tensors of STEP_COLUMNS, all fresh tensors of this step."""
        batch = logits.shape[0]
        if batch != self._batch:
            self.flush()
            self._batch = batch
        self._logits.append(logits.detach())
        self._targets.append(targets)
        self._values.extend(v.detach() for v in step_values)
        self._n += 1
        self._steps.append(step)
        self._epochs.append(epoch)
        self._lrs.append(lr)

    def flush(self) -> None:
        if self._n == 0:
            return
        now = time.perf_counter()
        n = self._n
        with torch.no_grad():
            logits, targets = torch.stack(self._logits), torch.stack(self._targets)  # (n, B, C)
            values = torch.stack(self._values).view(n, len(STEP_COLUMNS)).float()
            stats, hist = chunk_stats(logits, targets, values, **self._params)
            device_cols = [c for c in BATCH_COLUMNS if c not in HOST_COLUMNS]
            rows = torch.cat([torch.stack([stats[c] for c in device_cols], dim=1), hist], dim=1)  # (n, K + C)
        self._logits, self._targets, self._values = [], [], []
        event = None
        if self.device.type == "cuda":
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = rows
        self._pending.append(
            _Pending(host, event, self._steps, self._epochs, self._lrs, n * self._batch, now - self._since)
        )
        self._n, self._steps, self._epochs, self._lrs, self._since = 0, [], [], [], now

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
        data = p.host.numpy()
        device_cols = [c for c in BATCH_COLUMNS if c not in HOST_COLUMNS]
        values = np.empty((len(p.steps), len(BATCH_COLUMNS)))
        for j, name in enumerate(BATCH_COLUMNS):
            if name not in HOST_COLUMNS:
                values[:, j] = data[:, device_cols.index(name)]
        values[:, BATCH_COLUMNS.index("lr")] = p.lrs
        values[:, BATCH_COLUMNS.index("samples_per_s")] = p.samples / p.seconds if p.seconds > 0 else np.nan
        return BatchChunk(
            steps=np.asarray(p.steps, dtype=np.int64),
            epochs=np.asarray(p.epochs, dtype=np.int64),
            values=values,
            class_hist=data[:, len(device_cols) :].copy(),
        )
