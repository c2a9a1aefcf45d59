"""Synthetic but realistic `BatchChunk`s for the storage benchmarks: every BATCH_COLUMNS value drifts
like a training run, with noise, rare spikes and rare NaN, plus an 8-class predicted histogram.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from trainer import BATCH_COLUMNS, BatchChunk

# (start, end) level of each column over the run; the noise is relative to the level. Every column of
# BATCH_COLUMNS needs one: tests/unit/test_bench_chunks.py says so when a statistic is added or renamed
_LEVELS: dict[str, tuple[float, float]] = {
    "loss": (2.4, 0.6),
    "loss_ce": (2.1, 0.5),
    "loss_entropy": (0.3, 0.05),
    "loss_final_l2": (0.01, 0.03),
    "logit_max": (0.5, 6.0),
    "logit_min": (-0.5, -5.0),
    "logit_range": (1.0, 11.0),
    "logit_mean": (0.0, 0.1),
    "logit_std": (0.2, 2.5),
    "logit_margin": (0.1, 2.0),
    "logit_spread_max": (0.6, 7.0),
    "entropy_mean": (2.05, 1.2),
    "entropy_min": (1.9, 0.4),
    "entropy_p10": (2.0, 0.8),
    "target_entropy_mean": (0.9, 0.9),
    "maxprob_mean": (0.15, 0.6),
    "onehot_frac": (0.0, 0.03),
    "target_onehot_frac": (0.05, 0.05),
    "deploy_entropy_mean": (2.0, 1.0),
    "deploy_maxprob_mean": (0.16, 0.65),
    "deploy_onehot_frac": (0.0, 0.05),
    "hist_top_share": (0.2, 0.25),
    "hist_eff_classes": (7.5, 6.8),
    "output_diversity": (0.01, 0.15),
    "target_diversity": (0.2, 0.2),
    "grad_norm": (0.5, 1.1),
    "clipped": (0.0, 0.0),
    "head_weight_norm": (2.0, 4.5),
    "lr": (0.2, 0.2),
    "samples_per_s": (45_000.0, 45_000.0),
}
_GRAD, _CLIPPED = BATCH_COLUMNS.index("grad_norm"), BATCH_COLUMNS.index("clipped")
_SPIKY = np.array([c.startswith(("loss", "logit_")) for c in BATCH_COLUMNS])  # what a blow-up multiplies


def make_chunk(
    rng: np.random.Generator,
    first_step: int,
    rows: int,
    total_steps: int,
    *,
    classes: int = 8,
    steps_per_epoch: int = 1000,
    nan_share: float = 0.01,
) -> BatchChunk:
    """Rows first_step .. first_step + rows - 1 of a run of total_steps batches."""
    steps = np.arange(first_step, first_step + rows, dtype=np.int64)
    progress = (steps / max(1, total_steps - 1))[:, None]  # (N, 1)
    start = np.array([_LEVELS[c][0] for c in BATCH_COLUMNS])
    end = np.array([_LEVELS[c][1] for c in BATCH_COLUMNS])
    level = start + (end - start) * np.sqrt(progress)  # (N, K)
    values = level * (1 + 0.05 * rng.standard_normal(level.shape))
    spikes = rng.random(rows) < 0.002  # rare blow-ups: what the min/max downsampling must keep
    values[np.ix_(spikes, _SPIKY)] *= 8
    values[:, _CLIPPED] = (values[:, _GRAD] > 1.0).astype(np.float64)
    nan_rows = np.flatnonzero(rng.random(rows) < nan_share)
    values[nan_rows, rng.integers(0, len(BATCH_COLUMNS), len(nan_rows))] = np.nan
    hist = rng.dirichlet(np.full(classes, 4.0), rows)  # (N, C) shares summing to 1
    return BatchChunk(steps=steps, epochs=steps // steps_per_epoch, values=values, class_hist=hist)


def iter_chunks(total_rows: int, rows_per_chunk: int = 50, *, seed: int = 0, **kw: float) -> Iterator[BatchChunk]:
    rng = np.random.default_rng(seed)
    for first in range(0, total_rows, rows_per_chunk):
        yield make_chunk(rng, first, min(rows_per_chunk, total_rows - first), total_rows, **kw)


def make_chunks(total_rows: int, rows_per_chunk: int = 50, *, seed: int = 0, **kw: float) -> list[BatchChunk]:
    return list(iter_chunks(total_rows, rows_per_chunk, seed=seed, **kw))
