"""Per-batch statistics for the price of a few list appends per batch.

Each step hands over, by reference, what the loss already computed: raw logits, probabilities,
per-sample entropies, smoothed targets and their entropies, the loss terms, grad norm and the
head's squared norm. No copy and no kernel per batch. Every statistic is then computed for a
whole chunk of batches at once, in a couple of dozen vectorised ops, and read back
asynchronously on CUDA, so no batch forces a host sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from trainer import losses
from trainer.class_major import (
    class_major,
    in_pieces,
    rows_class_major,
    stats_class_major,
    use_class_major,
)
from trainer.host_copies import HostCopies
from trainer.records import BATCH_COLUMNS, BatchChunk
from trainer.stat_rows import ONE_HOT_THRESHOLD, assemble, mean_std

# Written by the step itself, in this order; everything else is derived per chunk.
STEP_COLUMNS = ("loss", "loss_ce", "loss_entropy", "loss_final_l2", "grad_norm", "head_weight_norm")
HOST_COLUMNS = ("lr", "samples_per_s")
# The order of chunk_stats' output columns (the class histogram follows them).
_PER_SAMPLE_MEANS = (
    "entropy_mean",
    "maxprob_mean",
    "logit_margin",
    "target_entropy_mean",
    "onehot_frac",
    "target_onehot_frac",
    "deploy_entropy_mean",
    "deploy_maxprob_mean",
    "deploy_onehot_frac",
)
DEVICE_COLUMNS = (
    *STEP_COLUMNS,
    *_PER_SAMPLE_MEANS,
    "logit_max",
    "logit_min",
    "logit_range",
    "logit_mean",
    "logit_std",
    "logit_spread_max",
    "entropy_min",
    "entropy_p10",
    "hist_top_share",
    "hist_eff_classes",
    "output_diversity",
    "target_diversity",
    "clipped",
)
if set(DEVICE_COLUMNS) | set(HOST_COLUMNS) != set(BATCH_COLUMNS) or len(DEVICE_COLUMNS) + 2 != len(BATCH_COLUMNS):
    raise RuntimeError("monitor.DEVICE_COLUMNS and HOST_COLUMNS must partition records.BATCH_COLUMNS")


def chunk_stats(
    logits: torch.Tensor,
    probs: torch.Tensor,
    entropy: torch.Tensor,
    targets: torch.Tensor,
    target_entropy: torch.Tensor,
    step_values: torch.Tensor,
    *,
    max_grad_norm: float | None,
    deploy_temperature: float | None = None,
) -> torch.Tensor:
    """Statistics of n batches of B samples and C classes, in DEVICE_COLUMNS order, then the class
    histogram: an (n, len(DEVICE_COLUMNS) + C) tensor in the dtype of `probs`.

    logits (n, B, C) raw; probs (n, B, C) = softmax(logits / T); entropy (n, B) of probs; targets
    (n, B, C) as the loss saw them (smoothed) and their entropies (n, B); step_values (n, 6): the
    loss terms, grad norm and ||W_head||^2 (STEP_COLUMNS with the head norm squared).
    `deploy_temperature`: the predictions as deployed are softmax(logits / deploy_temperature);
    None when it equals the training temperature (then they are `probs` themselves).
    """
    if use_class_major(logits):

        def rows_of(z: torch.Tensor, p: torch.Tensor, h: torch.Tensor, t: torch.Tensor, h_t: torch.Tensor,
                    values: torch.Tensor) -> torch.Tensor:  # fmt: skip
            pt = class_major(p)
            return stats_class_major(
                class_major(z), pt, h, pt.amax(1), class_major(t), h_t, values,
                max_grad_norm=max_grad_norm, deploy_temperature=deploy_temperature,
            )  # fmt: skip

        return in_pieces(rows_of, logits, probs, entropy, targets, target_entropy, step_values)
    n, b, c = logits.shape
    dtype = probs.dtype
    # CPU kernels that reduce over a middle axis or return indices (max, std, mean over B) cost
    # 10-50x more than last-axis sums here: reductions run over the last axis, the argmax comes
    # from the top-2 the margin needs anyway, and spreads are computed in two passes from sums.
    if c > 1:
        top2, top_idx = logits.topk(2, dim=-1)
        margin, pred = top2[..., 0] - top2[..., 1], top_idx[..., 0]  # argmax of logits = of probs
    else:
        margin = torch.zeros_like(entropy)
        pred = torch.zeros_like(entropy, dtype=torch.long)
    maxprob = probs.amax(-1)  # (n, B)
    if deploy_temperature is None:
        deploy_entropy, deploy_maxprob = entropy, maxprob
    else:
        log_pd = F.log_softmax(logits.to(dtype) / deploy_temperature, dim=-1)
        deploy_entropy, deploy_maxprob = losses.entropy(log_pd), log_pd.amax(-1).exp()
    # histogram by scatter_add: bincount / one_hot read the max back to the host on CUDA
    hist = torch.zeros(n, c, dtype=dtype, device=probs.device)
    hist.scatter_add_(1, pred, hist.new_full((), 1.0 / b).expand(n, b))
    per_sample = [
        entropy,
        maxprob,
        margin.to(dtype),
        target_entropy,
        maxprob > ONE_HOT_THRESHOLD,
        targets.amax(-1) > ONE_HOT_THRESHOLD,
        deploy_entropy,
        deploy_maxprob,
        deploy_maxprob > ONE_HOT_THRESHOLD,
    ]
    flat = logits.reshape(n, -1)
    zmin, zmax = torch.aminmax(flat, dim=1)
    zmean, zstd = mean_std(flat)
    # per sample, centred on its own mean logit: a shift shared by a sample's logits changes nothing
    spread = (logits - logits.sum(-1, keepdim=True) / c).abs().reshape(n, -1).amax(1)
    # output and target diversity: per class, the spread over the batch, averaged over classes
    both = torch.cat([probs, targets], dim=-1).transpose(1, 2)  # (n, 2C, B)
    diversity = mean_std(both)[1].view(n, 2, c).mean(-1)  # (n, 2)
    return assemble(
        step_values, per_sample, (zmax, zmin, zmean, zstd, spread), entropy, hist, diversity,
        max_grad_norm=max_grad_norm, dtype=dtype,
    )  # fmt: skip


def deploy_scale(temperature: float, deploy_temperature: float) -> float | None:
    """chunk_stats' `deploy_temperature`: None when the deployed view is the trained one."""
    return None if deploy_temperature == temperature else deploy_temperature


def split_stats(rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """chunk_stats' output as ({column: (n,)}, class histogram (n, C))."""
    k = len(DEVICE_COLUMNS)
    return {name: rows[:, j] for j, name in enumerate(DEVICE_COLUMNS)}, rows[:, k:]


def as_distributions(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Targets as distributions (..., C): soft targets as they are (in `dtype`), class indices one-hot.
    By scatter, not F.one_hot, which reads the largest index back to the host."""
    if targets.dtype.is_floating_point:
        return targets.to(dtype)
    out = torch.zeros(*targets.shape, num_classes, dtype=dtype, device=targets.device)
    return out.scatter_(-1, targets.long().unsqueeze(-1), 1.0)


def rows_from_logits(
    logits: torch.Tensor,
    raw_targets: torch.Tensor,
    step_values: torch.Tensor,
    *,
    temperature: float,
    label_smoothing: float,
    max_grad_norm: float | None,
    deploy_temperature: float = 1.0,
) -> torch.Tensor:
    """chunk_stats from logits (n, B, C) and raw targets alone, computing what the loss would have held:
    targets (n, B, C) distributions or (n, B) class indices; step_values (n, 6) as STEP_COLUMNS with the
    head norm itself. A NaN loss_ce is filled with the plain soft CE of the batch against the smoothed
    targets (what a loop that logs only its logits gets)."""
    values = step_values.to(torch.float64 if logits.dtype == torch.float64 else torch.float32).clone()
    values[:, 5] = values[:, 5].square()
    targets = as_distributions(raw_targets, logits.shape[-1], values.dtype)
    if use_class_major(logits):
        rows_of = partial(
            rows_class_major, temperature=temperature, label_smoothing=label_smoothing,
            max_grad_norm=max_grad_norm, deploy_temperature=deploy_scale(temperature, deploy_temperature),
        )  # fmt: skip
        return in_pieces(rows_of, logits, targets, values)
    log_p = F.log_softmax(logits / temperature, dim=-1)  # one fused kernel (CUDA, or a long class axis)
    p = log_p.exp()
    t = losses.smooth_targets(targets, label_smoothing)
    ce = -(t * log_p).sum(-1).mean(-1)  # (n,): losses.soft_cross_entropy, unweighted, batch by batch
    values[:, 1] = torch.where(values[:, 1].isnan(), ce, values[:, 1])
    return chunk_stats(
        logits,
        p,
        losses.entropy(log_p),
        t,
        losses.target_entropy(t),
        values,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_scale(temperature, deploy_temperature),
    )


def stats_from_logits(
    logits: torch.Tensor,
    raw_targets: torch.Tensor,
    step_values: torch.Tensor,
    *,
    temperature: float,
    label_smoothing: float,
    max_grad_norm: float | None,
    deploy_temperature: float = 1.0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`rows_from_logits` split by column: ({column: (n,)}, class histogram (n, C)). For tests and one-off use."""
    rows = rows_from_logits(
        logits,
        raw_targets,
        step_values,
        temperature=temperature,
        label_smoothing=label_smoothing,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_temperature,
    )
    return split_stats(rows)


@dataclass
class ChunkMeta:
    """What a chunk's rows carry besides the statistics: its steps, epochs, learning rates, throughput."""

    steps: list[int]
    epochs: list[int]
    lrs: list[float]
    samples: int
    seconds: float


class StatsRecorder:
    """Collects per-batch tensors on the device and hands back `BatchChunk`s of statistics.

    `record()` only keeps references to tensors the step created anyway (no copy, no kernel; the
    autograd graph's saved tensors are already freed by backward). `flush()` stacks them, computes
    the chunk's statistics and starts one copy to pinned host memory; `ready()` returns the chunks
    whose copy has landed, asking the device without waiting (`Event.query`). A batch of another
    size (the last of an epoch) flushes first, so a chunk always stacks into (n, B, C).
    """

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        capacity: int,
        *,
        max_grad_norm: float | None = None,
        temperature: float = 1.0,
        deploy_temperature: float = 1.0,
    ) -> None:
        self.num_classes, self.device, self.capacity = num_classes, device, capacity
        self._max_grad_norm = max_grad_norm
        self._deploy = deploy_scale(temperature, deploy_temperature)
        self._tensors: list[tuple[torch.Tensor, ...]] = []  # per batch: logits, probs, entropy, targets, h_t
        self._scalars: list[torch.Tensor] = []  # per batch: the six 0-d tensors of STEP_COLUMNS (head squared)
        self._batch = 0
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._lrs: list[float] = []
        self._trained = 0  # samples trained since the last flush, recorded batches or not
        self._since = time.perf_counter()
        self._copies: HostCopies[ChunkMeta] = HostCopies()

    @property
    def full(self) -> bool:
        return len(self._steps) >= self.capacity

    def record(
        self, logits: torch.Tensor, parts: losses.LossParts, grad_norm: torch.Tensor, step: int, epoch: int, lr: float
    ) -> None:
        """One step: its raw logits (B, C), what its loss computed, and its (pre-clipping) grad norm."""
        size = self._batch_size(logits)
        if size != self._batch:
            self.flush()
            self._batch = size
        self._tensors.append((logits, parts.probs, parts.entropy, parts.targets, parts.target_entropy))
        self._scalars += (parts.total, parts.ce, parts.entropy_term, parts.final_l2, grad_norm, parts.head_sq_norm)
        self._steps.append(step)
        self._epochs.append(epoch)
        self._lrs.append(lr)

    def count(self, samples: int) -> None:
        """Every step, recorded or not: samples/s is the training throughput, not the recorded one."""
        self._trained += samples

    def flush(self) -> None:
        n = len(self._steps)
        if n == 0:
            return
        now = time.perf_counter()
        compute = self._chunk_compute(self._tensors, self._scalars)
        self._tensors, self._scalars = [], []
        samples = self._trained or n * self._batch  # a caller that never counts: the recorded batches
        meta = ChunkMeta(self._steps, self._epochs, self._lrs, samples, now - self._since)
        if compute is not None:
            self._copies.submit(compute, meta)
        self._steps, self._epochs, self._lrs, self._since, self._trained = [], [], [], now, 0

    def _batch_size(self, logits: torch.Tensor) -> int:
        """The size whose change starts a new chunk (a rank's recorder: its global batch's)."""
        return logits.shape[0]

    def _chunk_compute(
        self, tensors: list[tuple[torch.Tensor, ...]], scalars: list[torch.Tensor]
    ) -> Callable[[], tuple[torch.Tensor]] | None:
        """What computes a chunk's statistics from its recorded steps (a rank's recorder gathers them first;
        None where this process does not compute them)."""
        return partial(_stacked_stats, tensors, scalars, self._max_grad_norm, self._deploy)

    def ready(self, wait: bool = False) -> list[BatchChunk]:
        """Chunks whose copy has landed; with `wait`, all of them (a sync point, used at the end)."""
        return [chunk_from_rows(rows, meta) for (rows,), meta in self._copies.ready(wait)]


def _stacked_stats(
    tensors: list[tuple[torch.Tensor, ...]],
    scalars: list[torch.Tensor],
    max_grad_norm: float | None,
    deploy_temperature: float | None,
) -> tuple[torch.Tensor]:
    """chunk_stats of a chunk's recorded steps: per step (logits, probs, entropy, targets, h_t) and the six
    0-d tensors of STEP_COLUMNS (head squared)."""
    logits, probs, entropy, targets, target_entropy = (torch.stack(group) for group in zip(*tensors, strict=True))
    values = torch.stack(scalars).view(len(tensors), len(STEP_COLUMNS)).to(probs.dtype)
    rows = chunk_stats(
        logits,
        probs,
        entropy,
        targets,
        target_entropy,
        values,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_temperature,
    )
    return (rows,)  # (n, K + C)


def chunk_from_rows(data: np.ndarray, meta: ChunkMeta) -> BatchChunk:
    """A chunk_stats output read back, (n, K + C), with its steps, epochs, learning rates and throughput."""
    k = len(DEVICE_COLUMNS)
    values = np.empty((len(meta.steps), len(BATCH_COLUMNS)))
    values[:, _DEVICE_INDEX] = data[:, :k]
    values[:, _LR] = meta.lrs
    values[:, _SAMPLES_PER_S] = meta.samples / meta.seconds if meta.seconds > 0 else np.nan
    return BatchChunk(
        steps=np.asarray(meta.steps, dtype=np.int64),
        epochs=np.asarray(meta.epochs, dtype=np.int64),
        values=values,
        class_hist=data[:, k:].copy(),
    )


_DEVICE_INDEX = np.array([BATCH_COLUMNS.index(name) for name in DEVICE_COLUMNS])
_LR, _SAMPLES_PER_S = BATCH_COLUMNS.index("lr"), BATCH_COLUMNS.index("samples_per_s")
