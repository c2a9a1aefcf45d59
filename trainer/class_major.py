"""Chunk statistics in a class-major layout (n, C, B): the same numbers as monitor.chunk_stats, for the CPU
with few classes.

PyTorch's CPU kernels reduce a short last axis one row at a time: in the (n, B, C) layout a log-softmax, a
top-2 or an argmax over C = 8 classes costs 5-30 us per batch of 256 samples, on one core. With the classes
outermost, a reduction over C is C elementwise ops over contiguous (n, B) slices, vectorised: the whole
chunk's statistics cost 4-6x less. monitor.chunk_stats and monitor.rows_from_logits take this path on the CPU
for up to CLASS_MAJOR_MAX_CLASSES classes (an unrolled loop over more would cost more than it saves).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainer import losses
from trainer.stat_rows import ONE_HOT_THRESHOLD, assemble, mean_std

CLASS_MAJOR_MAX_CLASSES = 32


# a chunk's statistics are computed this many samples (batches x batch size) at a time: the dozen (n, C, B)
# temporaries then stay in the CPU's caches (per sample, 64 x 256 cost 0.11 us, 250 x 256 0.17 us; 1 core)
PIECE_SAMPLES = 16_384


def use_class_major(logits: torch.Tensor) -> bool:
    return logits.device.type == "cpu" and 2 <= logits.shape[-1] <= CLASS_MAJOR_MAX_CLASSES


def in_pieces(rows_of: Callable[..., torch.Tensor], *chunk: torch.Tensor) -> torch.Tensor:
    """rows_of(*tensors) over slices of the chunk's batches (dim 0 of each tensor), concatenated."""
    n, b = chunk[0].shape[:2]
    step = max(1, PIECE_SAMPLES // max(1, b))
    if n <= step:
        return rows_of(*chunk)
    return torch.cat([rows_of(*(t[i : i + step] for t in chunk)) for i in range(0, n, step)])


def class_major(x: torch.Tensor) -> torch.Tensor:
    """(n, B, C) -> (n, C, B), contiguous."""
    return x.transpose(1, 2).contiguous()


def _top_two(zt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample of (n, C, B) logits: the largest, the second largest (equal to it on a tie) and the
    smallest, each (n, B); NaN propagates, as in topk."""
    top1, low = zt[:, 0], zt[:, 0]
    top2 = torch.full_like(top1, -math.inf)
    for c in range(1, zt.shape[1]):
        x = zt[:, c]
        top2 = torch.maximum(top2, torch.minimum(top1, x))
        top1, low = torch.maximum(top1, x), torch.minimum(low, x)
    return top1, top2, low


def _class_shares(zt: torch.Tensor, top1: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The predicted-class histogram (n, C): each sample's argmax class counts 1 / B, a tie of k classes
    1 / (k B) each. In float ops throughout: on the CPU a comparison into bool, a masked_fill or a scatter
    of argmax indices costs 2-3x as much."""
    is_top = (zt.to(dtype) - top1.to(dtype)[:, None]).sign_().add_(1)  # (n, C, B): 1 at the top, 0 below
    # a sample with a NaN or +inf logit has no top class here (x - top is NaN): it counts for none
    is_top.nan_to_num_(0.0)
    return (is_top / is_top.sum(1, keepdim=True).clamp_min(1)).sum(-1) / zt.shape[-1]


def _log_softmax(zt: torch.Tensor, top1: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(z / T) over the class axis of (n, C, B) logits, and the max-probability (n, B)."""
    shifted = zt / temperature - (top1 / temperature)[:, None]
    lse = shifted.exp().sum(1)  # (n, B), >= 1
    log_lse = lse.log()
    return shifted - log_lse[:, None], lse.reciprocal()  # the top class's log-probability is -log(lse)


def stats_class_major(
    zt: torch.Tensor,
    pt: torch.Tensor,
    entropy: torch.Tensor,
    maxprob: torch.Tensor,
    tt: torch.Tensor,
    target_entropy: torch.Tensor,
    step_values: torch.Tensor,
    *,
    top: tuple[torch.Tensor, ...] | None = None,
    max_grad_norm: float | None,
    deploy_temperature: float | None,
) -> torch.Tensor:
    """monitor.chunk_stats's rows from class-major tensors: zt raw logits, pt = softmax(z / T) and tt the
    smoothed targets, each (n, C, B); entropy, maxprob, target_entropy (n, B); step_values (n, 6) with the
    head's squared norm. `top`: _top_two(zt) when the caller has it."""
    n, c = zt.shape[:2]
    dtype = pt.dtype
    top1, top2, low = top or _top_two(zt)
    if deploy_temperature is None:
        deploy_entropy, deploy_maxprob = entropy, maxprob
    else:
        log_pd, deploy_maxprob = _log_softmax(zt.to(dtype), top1.to(dtype), deploy_temperature)
        deploy_entropy = losses.entropy(log_pd, dim=1)
    hist = _class_shares(zt, top1, dtype)
    per_sample = [
        entropy,
        maxprob,
        (top1 - top2).to(dtype),
        target_entropy,
        maxprob > ONE_HOT_THRESHOLD,
        tt.amax(1) > ONE_HOT_THRESHOLD,
        deploy_entropy,
        deploy_maxprob,
        deploy_maxprob > ONE_HOT_THRESHOLD,
    ]
    zmean, zstd = mean_std(zt.reshape(n, -1))
    centre = zt.sum(1) / c  # (n, B): each sample's own mean logit
    spread = torch.maximum(top1 - centre, centre - low).amax(1)
    diversity = torch.stack([mean_std(pt)[1].mean(-1), mean_std(tt)[1].mean(-1)], dim=1)  # (n, 2)
    return assemble(
        step_values, per_sample, (top1.amax(1), low.amin(1), zmean, zstd, spread), entropy, hist, diversity,
        max_grad_norm=max_grad_norm, dtype=dtype,
    )  # fmt: skip


def rows_class_major(
    logits: torch.Tensor,
    raw_targets: torch.Tensor,
    step_values: torch.Tensor,
    *,
    temperature: float,
    label_smoothing: float,
    max_grad_norm: float | None,
    deploy_temperature: float | None,
) -> torch.Tensor:
    """monitor.rows_from_logits in the class-major layout: logits (n, B, C) raw, raw targets (n, B, C) as
    distributions, step_values (n, 6) with the head's squared norm; a NaN loss_ce is filled with the
    batch's soft CE against the smoothed targets."""
    zt = class_major(logits)
    top = _top_two(zt)
    log_pt, maxprob = _log_softmax(zt, top[0], temperature)
    pt = log_pt.exp()
    tt = losses.smooth_targets(class_major(raw_targets.to(pt.dtype)), label_smoothing, dim=1)
    values = step_values.to(pt.dtype).clone()
    ce = -(tt * log_pt).sum(1).mean(-1)  # (n,): losses.soft_cross_entropy, unweighted, batch by batch
    values[:, 1] = torch.where(values[:, 1].isnan(), ce, values[:, 1])
    return stats_class_major(
        zt,
        pt,
        -(pt * log_pt).sum(1),  # losses.entropy(log_pt, dim=1) without a second exp
        maxprob,
        tt,
        losses.target_entropy(tt, dim=1),
        values,
        top=top,
        max_grad_norm=max_grad_norm,
        deploy_temperature=deploy_temperature,
    )
