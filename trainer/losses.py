"""The training objective as pure functions: each returns the total and its named terms.

objective = soft CE(softmax(z / T), smoothed targets; class weights)
          + entropy_weight * mean_i penalty(h_min_i - H_i)
          + final_layer_weight_decay * ||W_head||^2

The last term is logged, not differentiated: the optimiser applies the head's extra decay decoupled
(its own parameter group), because an L2 gradient goes through Adam's normalisation and its strength
then barely matters. `LossParts.trained` is what backward runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from trainer.config import TrainConfig


def smooth_targets(targets: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """(1 - eps) * t + eps / C over the class axis `dim`; applied once, to soft and one-hot targets alike."""
    if eps == 0.0:
        return targets
    return targets * (1.0 - eps) + eps / targets.shape[dim]


# The largest balanced weight before renormalisation: a class with almost no target mass would
# otherwise get a weight of 10^5 and the loss would fit nothing else.
CLASS_WEIGHT_CAP = 10.0


def balanced_class_weights(targets: torch.Tensor, cap: float = CLASS_WEIGHT_CAP) -> torch.Tensor:
    """w_c = 1 / (C * m_c) with m_c the class's share of target MASS (not argmax counts), capped at `cap`.

    Pass the targets the loss weights (smoothed). After the cap the weights are rescaled so that
    sum_c m_c * w_c = 1: on the training distribution the weighted loss keeps the unweighted scale.
    """
    mass = targets.float().mean(dim=0).clamp_min(1e-12)  # (C,)
    w = (1.0 / (targets.shape[-1] * mass)).clamp(max=cap)
    return w / (mass * w).sum()


def entropy(log_probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Per-row entropy in nats from log-softmax output over the class axis `dim` (finite for finite
    logits, so p = 0 adds 0)."""
    return -(log_probs.exp() * log_probs).sum(dim=dim)


def target_entropy(targets: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy in nats of target distributions over the class axis `dim` (0 log 0 = 0: t = 0 meets the
    log of the smallest normal number; xlogy, which gives the same, costs 4x as much on the CPU)."""
    return -(targets * targets.clamp_min(torch.finfo(targets.dtype).tiny).log()).sum(dim=dim)


def soft_cross_entropy(
    log_probs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-weighted soft CE, normalised like F.cross_entropy's weighted mean.

    loss = sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic, which for one-hot targets is
    exactly PyTorch's `cross_entropy(weight=w, reduction="mean")`; with uniform weights it is the
    plain per-sample mean.
    """
    if class_weights is None:
        return -(targets * log_probs).sum(dim=-1).mean()
    weighted = targets * class_weights  # (B, C)
    return -(weighted * log_probs).sum() / weighted.sum()


def entropy_penalty(h: torch.Tensor, h_min: torch.Tensor | float, kind: str) -> torch.Tensor:
    """Per-sample shortfall below the threshold, linear or squared, then averaged."""
    shortfall = (h_min - h).clamp_min(0.0)
    return (shortfall if kind == "linear" else shortfall.square()).mean()


@dataclass
class LossParts:
    """The objective, its terms, and the tensors it computed on the way (reused by the statistics)."""

    total: torch.Tensor  # the objective's value, every term included
    trained: torch.Tensor  # ce + entropy_term: what backward runs on (the head decay is the optimiser's)
    ce: torch.Tensor
    entropy_term: torch.Tensor
    final_l2: torch.Tensor
    log_probs: torch.Tensor  # (B, C) log softmax(z / T)
    probs: torch.Tensor  # (B, C)
    entropy: torch.Tensor  # (B,) prediction entropy, nats
    targets: torch.Tensor  # (B, C) smoothed targets
    target_entropy: torch.Tensor  # (B,) of the smoothed targets
    head_sq_norm: torch.Tensor  # ||W_head||^2 as the loss saw it (before this step's update)

    def terms(self) -> dict[str, torch.Tensor]:
        return {
            "loss": self.total,
            "loss_ce": self.ce,
            "loss_entropy": self.entropy_term,
            "loss_final_l2": self.final_l2,
        }


def objective(
    logits: torch.Tensor,
    targets: torch.Tensor,
    head_weight: torch.Tensor,
    *,
    label_smoothing: float,
    temperature: float,
    entropy_weight: float,
    min_entropy: float,
    entropy_penalty_kind: str,
    cap_entropy_at_target: bool,
    class_weights: torch.Tensor | None,
    final_layer_weight_decay: float,
) -> LossParts:
    """The full objective of one batch; temperature applies here exactly as in evaluation."""
    t = smooth_targets(targets, label_smoothing)
    log_probs = F.log_softmax(logits / temperature, dim=-1)
    probs = log_probs.exp()
    h = -(probs * log_probs).sum(dim=-1)  # `entropy(log_probs)` without a second exp
    h_t = target_entropy(t)
    ce = soft_cross_entropy(log_probs, t, class_weights)
    h_min = torch.clamp(h_t, max=min_entropy) if cap_entropy_at_target else min_entropy
    ent = entropy_weight * entropy_penalty(h, h_min, entropy_penalty_kind)
    head_sq = head_weight.detach().square().sum()  # logged even without the decay: the statistics read it
    l2 = final_layer_weight_decay * head_sq
    trained = ce + ent
    return LossParts(trained + l2, trained, ce, ent, l2, log_probs, probs, h, t, h_t, head_sq)


def objective_from_config(
    logits: torch.Tensor,
    targets: torch.Tensor,
    head_weight: torch.Tensor,
    cfg: TrainConfig,
    class_weights: torch.Tensor | None,
) -> LossParts:
    """`objective` with every regularizer taken from a TrainConfig."""
    return objective(
        logits,
        targets,
        head_weight,
        label_smoothing=cfg.label_smoothing,
        temperature=cfg.temperature,
        entropy_weight=cfg.entropy_weight,
        min_entropy=cfg.min_entropy,
        entropy_penalty_kind=cfg.entropy_penalty,
        cap_entropy_at_target=cfg.cap_entropy_at_target,
        class_weights=class_weights,
        final_layer_weight_decay=cfg.final_layer_weight_decay,
    )
