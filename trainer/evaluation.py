"""Validation metrics on predicted distributions (after temperature) against the raw soft targets.

Pure numpy functions, each testable on its own, and `evaluate_predictions` that fills an `EvalRecord`.
"""

from __future__ import annotations

import numpy as np

from trainer.records import EVAL_METRICS, EvalRecord

PROB_FLOOR = 1e-12  # log(p) of a zero prediction would be -inf; this keeps one bad row from making CE inf
ONEHOT_THRESHOLD = 0.99
ECE_BINS = 15


def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of each row in nats, with 0 * log 0 = 0."""
    p = _as_float(p)
    return -(p * np.log(np.maximum(p, np.finfo(np.float64).tiny))).sum(axis=-1)


def soft_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples of -sum_c t_c log p_c (p clipped at 1e-12)."""
    logp = np.log(np.maximum(_as_float(probs), PROB_FLOOR))
    return float(-(_as_float(targets) * logp).sum(axis=1).mean())


def kl_divergence(targets: np.ndarray, probs: np.ndarray) -> float:
    """KL(target || prediction): mean over samples of sum_c t_c log(t_c / p_c), 0 log 0 = 0, p clipped at 1e-12."""
    t = _as_float(targets)
    logp = np.log(np.maximum(_as_float(probs), PROB_FLOOR))
    logt = np.log(np.maximum(t, np.finfo(np.float64).tiny))
    return float((t * (logt - logp)).sum(axis=1).mean())


def accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples whose predicted argmax equals the target's argmax."""
    return float((np.argmax(probs, axis=1) == np.argmax(targets, axis=1)).mean())


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, float]:
    """(ECE, signed ECE) over `n_bins` equal-width confidence bins; signed > 0 means overconfident.

    Confidence is the max probability; bin b holds (b/n, (b+1)/n], the first bin also holds 0.
    ECE = sum_b (n_b/N) |acc_b - conf_b|, signed = sum_b (n_b/N) (conf_b - acc_b).
    With soft targets a prediction is right with the probability its target gives the predicted
    class, t[i, argmax p_i] (1 or 0 for hard labels), so a predictor with p = t scores 0.
    """
    p, t = _as_float(probs), _as_float(targets)
    conf = p.max(axis=1)
    correct = t[np.arange(len(p)), p.argmax(axis=1)]
    interior = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.digitize(conf, interior, right=True)  # right=True: each bin is closed on its upper edge
    n = conf.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    gap = np.bincount(bins, weights=conf - correct, minlength=n_bins)  # per bin: n_b * (conf_b - acc_b)
    return float(np.abs(gap).sum() / n), float(gap.sum() / n)


def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples of sum_c (p_c - t_c)²."""
    return float(((_as_float(probs) - _as_float(targets)) ** 2).sum(axis=1).mean())


def class_histogram(argmax: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class among the given class indices (all zeros when there are none)."""
    counts = np.bincount(np.asarray(argmax, dtype=np.int64), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def confusion_matrix(target_argmax: np.ndarray, pred_argmax: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; rows are the target's argmax class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(target_argmax), np.asarray(pred_argmax)), 1)
    return matrix


def _deployed_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    maxprob = p.max(axis=1)
    return {
        "deploy_kl": kl_divergence(t, p),
        "deploy_ece": expected_calibration_error(p, t)[0],
        "deploy_entropy_mean": float(entropy(p).mean()),
        "deploy_onehot_frac": float((maxprob > ONEHOT_THRESHOLD).mean()),
        "deploy_maxprob_mean": float(maxprob.mean()),
    }


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    objective: float,
    step: int,
    epoch: int,
    deployed_probs: np.ndarray | None = None,
) -> EvalRecord:
    """Every EVAL_METRICS value plus the class histograms and confusion matrix of one validation pass.

    `deployed_probs` are the same predictions at the deployment temperature (default: `probs`).
    """
    p, t = _as_float(probs), _as_float(targets)
    if p.ndim != 2 or p.shape != t.shape or p.shape[0] == 0:
        raise ValueError(f"probs and targets must be (N, C) with N > 0 and equal shapes, got {p.shape} and {t.shape}")
    num_classes = p.shape[1]
    ece, ece_signed = expected_calibration_error(p, t)
    maxprob = p.max(axis=1)
    metrics = {
        "objective": float(objective),
        "soft_ce": soft_cross_entropy(p, t),
        "kl": kl_divergence(t, p),
        "accuracy": accuracy(p, t),
        "ece": ece,
        "ece_signed": ece_signed,
        "brier": brier_score(p, t),
        "entropy_mean": float(entropy(p).mean()),
        "target_entropy_mean": float(entropy(t).mean()),
        "onehot_frac": float((maxprob > ONEHOT_THRESHOLD).mean()),
        "maxprob_mean": float(maxprob.mean()),
        **_deployed_metrics(p if deployed_probs is None else _as_float(deployed_probs), t),
    }
    pred, target = p.argmax(axis=1), t.argmax(axis=1)
    return EvalRecord(
        step=int(step),
        epoch=int(epoch),
        metrics={name: metrics[name] for name in EVAL_METRICS},
        pred_hist=class_histogram(pred, num_classes).tolist(),
        target_hist=class_histogram(target, num_classes).tolist(),
        confusion=confusion_matrix(target, pred, num_classes).tolist(),
    )
