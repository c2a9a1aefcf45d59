"""Soft-label data for training: the built-in annotator-vote generator, user tables, and the targets' profile.

Features are standardised with the training split's statistics; targets are float32 rows summing to 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import DataSpec
from trainer.records import DataProfile
from trainer.table_checks import TableError, TableIssue
from trainer.tables import read_table

__all__ = [
    "SoftLabelData",
    "TableError",
    "TableIssue",
    "annotator_votes",
    "bayes_posterior",
    "class_prior",
    "load_data",
    "load_table",
    "make_synthetic",
    "profile_targets",
    "read_table_summary",
]

ONEHOT_THRESHOLD = 0.99


@dataclass
class SoftLabelData:
    x_train: np.ndarray  # (N_train, F) float32, standardised
    t_train: np.ndarray  # (N_train, C) float32, rows sum to 1
    x_val: np.ndarray  # (N_val, F) float32, standardised with the training statistics
    t_val: np.ndarray  # (N_val, C) float32
    profile: DataProfile  # of the training targets
    feature_names: list[str]
    feature_mean: np.ndarray  # (F,) float64, subtracted from every split
    feature_std: np.ndarray  # (F,) float64, divided by (1.0 for a constant feature)
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.t_train.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def _entropy_nats(p: np.ndarray) -> np.ndarray:
    # p * log(max(p, tiny)) is exactly 0 where p == 0, without a log(0) warning
    return -(p * np.log(np.maximum(p, np.finfo(np.float64).tiny))).sum(axis=1)


def profile_targets(targets: np.ndarray, n_val: int, n_features: int) -> DataProfile:
    """The statistics of a split's targets that the collapse detector measures predictions against."""
    t = np.asarray(targets, dtype=np.float64)
    n, c = t.shape
    return DataProfile(
        num_classes=int(c),
        n_train=int(n),
        n_val=int(n_val),
        n_features=int(n_features),
        target_entropy_mean=float(_entropy_nats(t).mean()),
        target_onehot_frac=float((t.max(axis=1) > ONEHOT_THRESHOLD).mean()),
        target_class_share=(np.bincount(t.argmax(axis=1), minlength=c) / n).tolist(),
        target_mass_share=t.mean(axis=0).tolist(),
    )


def _split_and_standardise(
    x: np.ndarray,
    t: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator,
    feature_names: list[str],
    class_names: list[str],
) -> SoftLabelData:
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples to make a training and a validation split, got {n}")
    # at least one sample on each side, so evaluation and training always have data
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    order = rng.permutation(n)
    train, val = order[n_val:], order[:n_val]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of becoming NaN
    x_std = ((x - mean) / std).astype(np.float32)
    t32 = t.astype(np.float32)
    return SoftLabelData(
        x_train=x_std[train],
        t_train=t32[train],
        x_val=x_std[val],
        t_val=t32[val],
        profile=profile_targets(t[train], n_val, x.shape[1]),
        feature_names=feature_names,
        feature_mean=mean,
        feature_std=std,
        class_names=class_names,
    )


# --- the built-in generator ---------------------------------------------------------------------
def class_prior(num_classes: int, imbalance: float) -> np.ndarray:
    """Geometric prior from 1 down to 1/imbalance (class 0 most frequent), normalised."""
    ratio = np.arange(num_classes) / max(num_classes - 1, 1)
    prior = float(imbalance) ** -ratio
    return prior / prior.sum()


def bayes_posterior(x: np.ndarray, means: np.ndarray, cluster_std: float, prior: np.ndarray) -> np.ndarray:
    """Exact p(c | x) for isotropic Gaussian classes N(means[c], cluster_std² I) with the given prior."""
    # ||x - mu||² expanded keeps memory at (N, C) instead of (N, C, F)
    sq_dist = (x * x).sum(1, keepdims=True) - 2.0 * x @ means.T + (means * means).sum(1)
    logits = np.log(prior) - sq_dist / (2.0 * cluster_std**2)
    logits -= logits.max(axis=1, keepdims=True)
    post = np.exp(logits)
    return post / post.sum(axis=1, keepdims=True)


def annotator_votes(
    posterior: np.ndarray, n_annotators: int, biased_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Vote shares of `n_annotators`: each vote is class 0 with probability `biased_rate`, else drawn from p(c|x)."""
    n, c = posterior.shape
    cum = np.cumsum(posterior, axis=1)
    counts = np.zeros((n, c))
    rows = np.arange(n)
    for _ in range(n_annotators):
        # inverse-CDF draw; the clip guards against cum[-1] rounding to just below u
        labels = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), c - 1)
        labels[rng.random(n) < biased_rate] = 0
        counts[rows, labels] += 1.0
    return counts / n_annotators


def make_synthetic(spec: DataSpec) -> SoftLabelData:
    """Gaussian class clusters labelled by simulated annotators; the same seed gives identical arrays.

    The model, with C = num_classes, F = n_features, A = n_annotators:
    - prior: pi_c proportional to imbalance^(-c / (C-1)), so class 0 is `imbalance` times as frequent
      as class C-1 (imbalance 1 = balanced).
    - class means: mu_c ~ N(0, (2 / F) * class_separation² * I_F), so the typical distance between two
      class centres is 2 * class_separation whatever F is; only class_separation / cluster_std matters.
    - samples: y ~ pi, x = mu_y + cluster_std * N(0, I_F); y itself is never shown to the annotators.
    - annotators: each of the A votes per sample is class 0 with probability `biased_annotator_rate`
      (a biased annotator who favours class 0), otherwise a draw from the exact Bayes posterior
      p(c | x) computed from the known Gaussians and prior. The target is the vote shares (counts / A).
    - split: a random `val_fraction` of the samples (at least one) is held out for validation.
    """
    c, f = spec.num_classes, spec.n_features
    if c < 2 or spec.n_samples < 2 or f < 1 or spec.n_annotators < 1:
        raise ValueError("make_synthetic needs num_classes >= 2, n_samples >= 2, n_features >= 1, n_annotators >= 1")
    rng = np.random.default_rng(spec.seed)
    prior = class_prior(c, spec.imbalance)
    means = rng.standard_normal((c, f)) * spec.class_separation * np.sqrt(2.0 / f)
    y = rng.choice(c, size=spec.n_samples, p=prior)
    x = means[y] + spec.cluster_std * rng.standard_normal((spec.n_samples, f))
    posterior = bayes_posterior(x, means, spec.cluster_std, prior)
    targets = annotator_votes(posterior, spec.n_annotators, spec.biased_annotator_rate, rng)
    names = [f"x{j}" for j in range(f)]
    return _split_and_standardise(x, targets, spec.val_fraction, rng, names, [str(k) for k in range(c)])


# --- user tables --------------------------------------------------------------------------------
def load_table(
    path: str | Path,
    label_column: str | None = None,
    num_classes: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SoftLabelData:
    """Load a CSV, Parquet or NPZ table (see `trainer.tables`); raises `TableError` naming rows and columns.

    A table holds feature columns plus either one label column (integer ids 0..C-1 or class names,
    mapped in sorted order; `label_column`, default a column named `label`) made one-hot, or one
    probability column per class (`p0..p{C-1}`, or `prob_<class>` / `p_<class>`). NPZ archives hold
    `x` (rows, features) and `y` (labels) or `p` (rows, classes).
    """
    parsed = read_table(path, label_column=label_column, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    return _split_and_standardise(
        parsed.features, parsed.targets, val_fraction, rng, parsed.feature_columns, parsed.class_names
    )


def read_table_summary(path: str | Path, label_column: str | None = None) -> dict[str, Any]:
    """Validate a table like `load_table` and describe it: format, rows, features, classes, target kind,
    which columns became features and which targets, and the targets' mean entropy (nats) and class shares."""
    parsed = read_table(path, label_column=label_column)
    profile = profile_targets(parsed.targets, 0, parsed.features.shape[1])  # the detector's own definitions
    return parsed.summary() | {
        "target_entropy": profile.target_entropy_mean,
        "class_shares": profile.target_mass_share,
    }


def load_data(spec: DataSpec) -> SoftLabelData:
    """The data a config asks for: the synthetic generator or a user table."""
    if spec.kind == "synthetic":
        return make_synthetic(spec)
    if spec.kind == "table":
        if not spec.path:
            raise ValueError('data.path is required when data.kind is "table"')
        return load_table(spec.path, spec.label_column, spec.num_classes, spec.val_fraction, spec.seed)
    raise ValueError(f'data.kind must be "synthetic" or "table", got {spec.kind!r}')
