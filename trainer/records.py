"""The records the trainer hands to a sink: batch statistics, evaluations, warnings, the result.

These plain dataclasses are the whole contract between `trainer/` and anything that stores or
shows what it measured; they hold Python and numpy values only, never tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One row per recorded batch, in this column order; the predicted-class histogram follows
# separately (one share per class, summing to 1).
BATCH_COLUMNS: tuple[str, ...] = (
    # loss terms (the objective is their sum)
    "loss",  # total objective
    "loss_ce",  # soft cross-entropy against the (smoothed) targets, class-weighted
    "loss_entropy",  # entropy_weight * penalty
    "loss_final_l2",  # final_layer_weight_decay * ||W_head||^2
    # raw logits (before temperature)
    "logit_max",
    "logit_min",
    "logit_range",
    "logit_mean",
    "logit_std",
    "logit_margin",  # mean top-1 minus top-2 raw logit
    "logit_spread_max",  # largest |z_ic - mean_c z_ic|: a sample's own shift, which softmax ignores, removed
    # prediction entropy (nats) of softmax(logits / T), and the targets' beside it
    "entropy_mean",
    "entropy_min",
    "entropy_p10",
    "target_entropy_mean",
    # confidence and diversity
    "maxprob_mean",
    "onehot_frac",  # share of predictions with max-probability > 0.99
    "target_onehot_frac",  # share of the targets the loss fits (smoothed) with max > 0.99
    # the same predictions as deployed: softmax(logits / deploy_temperature), T = 1 by default
    "deploy_entropy_mean",
    "deploy_maxprob_mean",
    "deploy_onehot_frac",
    "hist_top_share",  # largest share of the predicted-class histogram
    "hist_eff_classes",  # exp(entropy of the predicted-class histogram)
    "output_diversity",  # mean over classes of the std of p across the batch
    "target_diversity",  # the same for the (smoothed) targets
    # optimisation
    "grad_norm",  # global norm before clipping
    "clipped",  # 1.0 when clipping scaled the gradient
    "head_weight_norm",  # Frobenius norm of the classifier weight, as the step's loss saw it
    "lr",
    "samples_per_s",
)

# Scalar metrics of one evaluation pass over the held-out split.
EVAL_METRICS: tuple[str, ...] = (
    "objective",  # the training objective (all terms) on the validation split
    "soft_ce",  # plain soft cross-entropy against the raw targets, no weights or smoothing
    "kl",  # KL(target || prediction), mean over samples
    "accuracy",  # argmax(prediction) == argmax(target)
    "ece",  # expected calibration error, 15 equal-width bins, accuracy as the target's mass on the prediction
    "ece_signed",  # sum of bin weight * (confidence - accuracy): > 0 overconfident
    "brier",  # mean over samples of sum_c (p_c - t_c)^2
    "entropy_mean",  # mean prediction entropy (nats)
    "target_entropy_mean",  # mean entropy of the raw targets (nats)
    "onehot_frac",
    "maxprob_mean",
    # as deployed, softmax(logits / deploy_temperature), against the raw targets
    "deploy_kl",
    "deploy_ece",
    "deploy_entropy_mean",
    "deploy_onehot_frac",
    "deploy_maxprob_mean",
)


@dataclass
class BatchChunk:
    """Statistics of consecutive recorded batches: row i belongs to `steps[i]`."""

    steps: np.ndarray  # (N,) int64, global batch index starting at 0
    epochs: np.ndarray  # (N,) int64
    values: np.ndarray  # (N, len(BATCH_COLUMNS)) float64; NaN/inf kept as they are
    class_hist: np.ndarray  # (N, C) float64, predicted-class shares per batch
    columns: tuple[str, ...] = BATCH_COLUMNS

    def __len__(self) -> int:
        return len(self.steps)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


@dataclass
class EvalRecord:
    step: int
    epoch: int
    metrics: dict[str, float]  # keys: EVAL_METRICS
    pred_hist: list[float]  # predicted-class shares
    target_hist: list[float]  # target argmax-class shares
    confusion: list[list[int]]  # [target argmax][predicted]


@dataclass
class Advice:
    """The next change to try: a human sentence and the config overrides that make it."""

    message: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CollapseWarning:
    kind: str  # e.g. "one_hot", "dominant_class", "low_entropy", "exploding_logits", ...
    severity: str  # "info" | "warning" | "critical"
    step: int  # the first step at which the condition held
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    advice: Advice | None = None


@dataclass
class DataProfile:
    """The training targets' own statistics: every detector threshold is relative to these."""

    num_classes: int
    n_train: int
    n_val: int
    n_features: int
    target_entropy_mean: float  # raw targets, nats
    target_onehot_frac: float  # share of targets with max > 0.99
    target_class_share: list[float]  # share of each argmax class
    target_mass_share: list[float]  # mean target distribution


@dataclass
class RunInfo:
    """What a sink learns when a run starts."""

    config: dict[str, Any]  # the effective config, exactly as it runs
    device: str
    num_classes: int
    columns: tuple[str, ...]
    profile: DataProfile
    class_weights: list[float]  # the weights actually used (resolved from "balanced")
    n_parameters: int
    steps_per_epoch: int


@dataclass
class TrainResult:
    status: str  # "completed" | "cancelled" | "diverged" | "failed"
    config: dict[str, Any]
    steps: int  # batches trained
    epochs: int  # epochs completed
    duration_s: float
    final_eval: EvalRecord | None
    warnings: list[CollapseWarning]
    error: str | None = None
