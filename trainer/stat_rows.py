"""What both layouts of the chunk statistics share (monitor.chunk_stats, class_major.stats_class_major): one
definition of near one-hot, the two-pass spread, and the assembly of a chunk's rows in DEVICE_COLUMNS order."""

from __future__ import annotations

import math

import torch

ONE_HOT_THRESHOLD = 0.99


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the last axis, two-pass (exact where E[x^2] - E[x]^2 is not)."""
    k = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / k
    dev = x - mean
    return mean.squeeze(-1), ((dev * dev).sum(-1) / k).sqrt()


def assemble(
    step_values: torch.Tensor,
    per_sample: list[torch.Tensor],
    logits: tuple[torch.Tensor, ...],
    entropy: torch.Tensor,
    hist: torch.Tensor,
    diversity: torch.Tensor,
    *,
    max_grad_norm: float | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """A chunk's rows (n, len(DEVICE_COLUMNS) + C): step_values (n, 6) with the head's squared norm; the nine
    per-sample values (n, B) of monitor._PER_SAMPLE_MEANS, flags as bools; the logits' (max, min, mean, std,
    spread) (n,) each; entropy (n, B); the class histogram (n, C); output and target diversity (n, 2)."""
    b = entropy.shape[1]
    means = torch.stack(per_sample, dim=1).sum(-1) / b  # one reduction for all nine (stack promotes the flags)
    zmax, zmin, zmean, zstd, spread = logits
    grad_norm = step_values[:, 4]
    clipped = grad_norm > max_grad_norm if max_grad_norm is not None else torch.zeros_like(grad_norm, dtype=torch.bool)
    columns = [
        step_values[:, :5],
        step_values[:, 5:].sqrt(),  # head_weight_norm
        means,
        torch.stack([zmax, zmin, zmax - zmin, zmean, zstd, spread], dim=1).to(dtype),
        entropy.amin(1, keepdim=True),
        entropy.kthvalue(max(1, math.ceil(0.1 * b)), dim=1, keepdim=True).values,
        hist.amax(1, keepdim=True),
        torch.special.entr(hist).sum(1, keepdim=True).exp(),  # effective number of predicted classes
        diversity,
        clipped[:, None],
        hist,
    ]
    return torch.cat([col.to(dtype) for col in columns], dim=1)
