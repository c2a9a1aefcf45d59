"""One run on several processes, each rank's side: the process group, the rank's rows of every batch and its
share of the batch's loss, the per-chunk gather of per-sample tensors to rank 0, and the per-chunk agreement.

Imported in a rank's process only (trainer/ranks.py): a run on one process never initialises torch.distributed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist

from trainer.losses import LossParts, smooth_targets
from trainer.monitor import STEP_COLUMNS, StatsRecorder, chunk_stats

# A collective that waits longer than this raises: a peer that hangs without dying ends the run. Long enough
# for rank 0's evaluation of a large validation split, which the other ranks wait out at their next collective.
TIMEOUT_S = 300.0
# The ranks meet at most this far apart (and at least every flush_batches recorded batches): a cancel or a
# divergence stops every rank within about this long, and the live view is as fresh as on one process.
MAX_SYNC_SECONDS = 1.0
FIRST_SYNC_STEPS = 4
_SAMPLE_FIELDS = 3  # logits, probs and targets: C values each; then the entropy and the target's entropy


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: its rank, the number of ranks and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def describe(self) -> str:
        """The run's devices as RunInfo records them: "cpu, 2 processes (gloo)"."""
        where = "cpu" if self.device.type == "cpu" else f"cuda:0 to cuda:{self.world - 1}"
        return f"{where}, {self.world} processes ({self.backend})"

    def sizes(self, batch: int) -> list[int]:
        """Each rank's rows of a global batch of `batch` samples, in rank order: equal shares (batch_size is
        divisible by processes); the last batch of an epoch may leave the last ranks one row short, or none."""
        q, extra = divmod(batch, self.world)
        return [q + (r < extra) for r in range(self.world)]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the global batch `idx`: gathered in rank order, the slices are the batch."""
        sizes = self.sizes(len(idx))
        start = sum(sizes[: self.rank])
        return idx[start : start + sizes[self.rank]]


def init_group(shard: Shard, port: int) -> None:
    """Join the run's process group through the launcher's store at 127.0.0.1:`port`."""
    if sys.platform == "linux":  # the ranks share one machine: their traffic stays on the loopback device
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    timeout = timedelta(seconds=TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    cuda = shard.device.type == "cuda"
    if cuda:
        torch.cuda.set_device(shard.device)
    dist.init_process_group(
        shard.backend,
        store=store,
        rank=shard.rank,
        world_size=shard.world,
        timeout=timeout,
        device_id=shard.device if cuda else None,
    )


def wrap(model: torch.nn.Module, shard: Shard) -> torch.nn.Module:
    """DDP around the model: it starts every rank from rank 0's weights and its backward all-reduces (averages)
    the gradients. The MLP has no buffers to keep in step."""
    ids = [shard.device.index] if shard.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def loss_share(
    logits: torch.Tensor,
    parts: LossParts,
    *,
    local: int,
    batch: int,
    world: int,
    ce_weight: torch.Tensor | float,
) -> LossParts:
    """This rank's terms as shares of the global batch's: the CE times `ce_weight` (its share of the batch's
    class-weight mass, which makes the CE's normalisation the global batch's), the entropy penalty times its
    share of samples. Backward runs on `world` times their sum, as DDP averages over ranks: the gradient is
    then one process's on the whole batch. The recorded terms are the shares; rank 0 sums them."""
    if local == 0:  # an empty share still joins DDP's all-reduce, with zero gradients
        zero = logits.sum() * 0.0
        return replace(parts, total=zero.detach(), trained=zero, ce=zero.detach(), entropy_term=zero.detach())
    ce = parts.ce * ce_weight
    entropy_term = parts.entropy_term * (local / batch)
    share = ce + entropy_term
    return replace(
        parts, total=share.detach(), trained=share * world, ce=ce.detach(), entropy_term=entropy_term.detach()
    )


def ce_share(
    local_targets: torch.Tensor, batch_targets: torch.Tensor, label_smoothing: float, class_weights: torch.Tensor | None
) -> torch.Tensor | float:
    """The rank's share of the soft CE's normaliser: its samples' share without class weights, else its share
    of sum_i sum_c w_c t'_ic (t' smoothed), computed from the global batch's targets every rank holds."""
    if class_weights is None:
        return len(local_targets) / len(batch_targets)
    with torch.no_grad():
        local = (smooth_targets(local_targets, label_smoothing) * class_weights).sum()
        return local / (smooth_targets(batch_targets, label_smoothing) * class_weights).sum()


def pack_chunk(tensors: list[tuple[torch.Tensor, ...]], scalars: list[torch.Tensor], width: int) -> torch.Tensor:
    """A rank's recorded steps as one flat tensor for the gather: per sample (n, width, 3C + 2) = logits, probs,
    targets, entropy, target entropy (rows past the rank's own are zeros), then the step values (n, 6)."""
    logits, probs, entropy, targets, target_entropy = (torch.stack(group) for group in zip(*tensors, strict=True))
    n, b, c = logits.shape
    samples = probs.new_zeros((n, width, _SAMPLE_FIELDS * c + 2))
    samples[:, :b] = torch.cat(
        [logits.to(probs.dtype), probs, targets, entropy[..., None], target_entropy[..., None]], -1
    )
    values = torch.stack(scalars).view(n, len(STEP_COLUMNS)).to(probs.dtype)
    return torch.cat([samples.view(-1), values.view(-1)])


def gathered_stats(
    buffers: list[torch.Tensor],
    n: int,
    sizes: list[int],
    num_classes: int,
    *,
    max_grad_norm: float | None,
    deploy_temperature: float | None,
) -> tuple[torch.Tensor]:
    """chunk_stats of the global batches from every rank's packed chunk (rank order): the per-sample tensors
    side by side make the batches one process would see; the CE and entropy shares are summed, the L2 term,
    grad norm (after DDP's all-reduce) and head norm are the same on every rank and taken from rank 0."""
    c, width = num_classes, max(sizes)
    per_sample = n * width * (_SAMPLE_FIELDS * c + 2)
    samples = torch.cat(
        [buf[:per_sample].view(n, width, -1)[:, :b] for buf, b in zip(buffers, sizes, strict=True)], dim=1
    )  # (n, B, 3C + 2)
    shares = torch.stack([buf[per_sample:].view(n, len(STEP_COLUMNS)) for buf in buffers])  # (P, n, 6)
    values = shares[0].clone()
    values[:, 1:3] = shares[:, :, 1:3].sum(0)
    values[:, 0] = values[:, 1] + values[:, 2] + values[:, 3]  # the objective: CE + entropy penalty + L2
    rows = chunk_stats(
        samples[..., :c].contiguous(),
        samples[..., c : 2 * c].contiguous(),
        samples[..., 3 * c].contiguous(),
        samples[..., 2 * c : 3 * c].contiguous(),
        samples[..., 3 * c + 1].contiguous(),
        values,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_temperature,
    )
    return (rows,)


class ShardRecorder(StatsRecorder):
    """A rank's StatsRecorder: a flush gathers the chunk's per-sample tensors to rank 0 (one collective per
    chunk, every rank at the same step), where the statistics of the global batches are computed as on one
    process; a chunk starts anew when the global batch's size changes (set `batch` before each step)."""

    def __init__(self, num_classes: int, device: torch.device, capacity: int, *, shard: Shard, **kwargs: object):
        super().__init__(num_classes, device, capacity, **kwargs)  # type: ignore[arg-type]
        self.shard = shard
        self.batch = 0  # the global batch's size, this step

    def _batch_size(self, logits: torch.Tensor) -> int:
        return self.batch

    def _chunk_compute(
        self, tensors: list[tuple[torch.Tensor, ...]], scalars: list[torch.Tensor]
    ) -> partial[tuple[torch.Tensor]] | None:
        sizes = self.shard.sizes(self._batch)
        packed = pack_chunk(tensors, scalars, max(sizes))
        buffers = [torch.empty_like(packed) for _ in range(self.shard.world)] if self.shard.rank == 0 else None
        dist.gather(packed, buffers, dst=0)
        if buffers is None:
            return None
        stats = partial(gathered_stats, max_grad_norm=self._max_grad_norm, deploy_temperature=self._deploy)
        return partial(stats, buffers, len(tensors), sizes, self.num_classes)


class Pace:
    """Rank 0's choice of the steps to the next sync point: about min(flush_seconds, MAX_SYNC_SECONDS) of
    training at the last chunk's speed, at most flush_batches recorded batches, at least one step."""

    def __init__(self, flush_seconds: float, flush_batches: int, stats_interval: int) -> None:
        self.seconds = min(flush_seconds, MAX_SYNC_SECONDS)
        self.most = max(1, flush_batches * stats_interval)
        self.first = min(self.most, FIRST_SYNC_STEPS)
        self._since, self._step = time.perf_counter(), 0

    def next(self, step: int) -> int:
        now = time.perf_counter()
        per_step = (now - self._since) / max(1, step - self._step)
        self._since, self._step = now, step
        return max(1, min(self.most, int(self.seconds / per_step))) if per_step > 0 else self.most


def agree(shard: Shard, *, cancel: bool, diverged: bool, next_steps: int) -> tuple[str | None, int]:
    """One all-reduce per chunk: rank 0's verdict ("diverged", "cancelled" or None) and the steps to the next
    sync point reach every rank, so all stop at the same step. The other ranks pass zeros."""
    flags = torch.tensor([diverged, cancel, next_steps], dtype=torch.int64, device=shard.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    diverged_any, cancel_any, steps = flags.tolist()  # a sync point, once per chunk
    verdict = "diverged" if diverged_any else "cancelled" if cancel_any else None
    return verdict, int(steps)
