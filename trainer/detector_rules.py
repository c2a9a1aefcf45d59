"""The collapse detector's batch rules: per-row signals, each rule's raise / critical / clear conditions, messages.

Two views of every prediction: as trained, softmax(z / T) against the targets the loss fits (smoothed),
and as deployed, softmax(z / deploy_temperature) against the raw targets. Where the trained view has
two target references (the raw profile and the batch's smoothed targets), a rule takes the one that
makes it fire less, so a run whose targets are themselves peaky stays quiet. Too-uniform predictions are
judged against the raw targets alone: smoothing that flattens peaky data past them is the fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.config import TrainConfig
from trainer.records import BatchChunk, DataProfile

PERSIST = 20  # consecutive recorded batches a condition must hold (fewer on short epochs: see detector.py)
CLEAR = 20  # consecutive batches below the lower threshold before a kind may be raised again
# one_hot: raised when the near-one-hot share passes a quarter of the way from the targets' own
# share to 1, critical past 70% of the way; on one-hot targets (share 1) fitting them is no collapse
ONEHOT_RAISE, ONEHOT_CRIT = 0.25, 0.7
LOGIT_WARN, LOGIT_CRIT, LOGIT_CLEAR = 10.0, 100.0, 8.0  # |logit| / T
GRAD_RATIO_WARN, GRAD_RATIO_CRIT, GRAD_RATIO_CLEAR = 50.0, 1000.0, 10.0  # x running median
GRAD_CLIP_FACTOR = 10.0  # with clipping on, also above 10 x max_grad_norm


@dataclass(frozen=True)
class Rule:
    kind: str
    persist: int = PERSIST
    crit_persist: int = PERSIST
    clear: int = CLEAR
    warmup: str = "batch"  # "batch": the detector's warm-up; "uniform": the longer one; "none"
    critical_in_warmup: bool = False  # an extreme value is not a transient: fire it during the warm-up


RULES: tuple[Rule, ...] = (
    Rule("nonfinite_loss", persist=1, crit_persist=1, clear=10, warmup="none"),
    Rule("nonfinite_gradients", persist=1, crit_persist=1, clear=10, warmup="none"),
    Rule("exploding_gradients", persist=3, crit_persist=3),
    # logit growth is smooth, not noisy: a short run is enough
    Rule("exploding_logits", persist=5, crit_persist=5, critical_in_warmup=True),
    Rule("one_hot"),
    Rule("dominant_class"),
    Rule("low_entropy"),
    Rule("too_uniform", warmup="uniform"),
)  # deployed_collapse is judged on evaluation passes: see deployed_view below


@dataclass
class Signals:
    """Per-row arrays (N,) the rules read, computed once per chunk."""

    steps: np.ndarray
    loss: np.ndarray
    grad: np.ndarray
    grad_ref: float  # running median of healthy grad norms
    grad_ratio: np.ndarray
    logit_max: np.ndarray
    logit_min: np.ndarray
    logit_mean: np.ndarray
    logit_raw: np.ndarray  # largest distance of a raw logit from its own sample's mean logit
    logit_scaled: np.ndarray  # the same / T: what the softmax sees
    entropy: np.ndarray
    target_entropy_low: np.ndarray  # the lower of the raw profile's and the batch's smoothed targets'
    onehot: np.ndarray
    target_onehot: np.ndarray  # the higher of the profile's and the batch's
    onehot_threshold: np.ndarray
    onehot_critical: np.ndarray
    deploy_entropy: np.ndarray
    deploy_onehot: np.ndarray
    deploy_onehot_threshold: float  # against the raw targets' own near-one-hot share
    deploy_onehot_critical: float
    top_share: np.ndarray
    top_class: np.ndarray
    top_target_share: np.ndarray
    dominant_threshold: np.ndarray
    eff_classes: np.ndarray
    output_diversity: np.ndarray
    target_diversity: np.ndarray
    diversity_ratio: np.ndarray


def _noise_margin(share: np.ndarray | float, batch_size: int) -> np.ndarray:
    # three binomial standard deviations of a share measured on one batch: tiny batches cannot fire
    share = np.clip(share, 0.0, 1.0)
    return 3.0 * np.sqrt(share * (1.0 - share) / max(batch_size, 1))


def _onehot_thresholds(target_share: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    room = 1.0 - target_share
    raise_at = np.maximum(target_share + ONEHOT_RAISE * room, target_share + _noise_margin(target_share, batch_size))
    return np.maximum(raise_at, 0.2), np.maximum(target_share + ONEHOT_CRIT * room, raise_at)


def compute_signals(chunk: BatchChunk, config: TrainConfig, profile: DataProfile, grad_ref: float) -> Signals:
    col = chunk.column
    n, b = len(chunk), config.batch_size
    logit_max, logit_min, logit_mean = col("logit_max"), col("logit_min"), col("logit_mean")
    # softmax ignores a shift shared by one sample's logits: the spread is measured per sample
    raw = col("logit_spread_max")
    grad = col("grad_norm")
    with np.errstate(divide="ignore", invalid="ignore"):
        grad_ratio = grad / grad_ref if grad_ref > 0 else np.full(n, np.nan)
        diversity_ratio = col("output_diversity") / col("target_diversity")
    # the targets the loss fits: a smoothed one-hot target is no longer one-hot, so predictions
    # sharper than it are a collapse; unsmoothed hard labels make one-hot the fit itself
    target_onehot = np.nan_to_num(col("target_onehot_frac"), nan=profile.target_onehot_frac)
    onehot_threshold, onehot_critical = _onehot_thresholds(target_onehot, b)
    deploy_thr, deploy_crit = _onehot_thresholds(np.float64(profile.target_onehot_frac), b)
    hist = chunk.class_hist
    top_class = np.argmax(np.nan_to_num(hist, nan=-1.0), axis=1)
    top_share = hist[np.arange(n), top_class]
    s = np.asarray(profile.target_class_share, dtype=float)[top_class]
    # 2x the target share (+0.1), but never more than 3/4 of the way from the share to 1, so a
    # class that is half the data can still be caught taking nearly all of the predictions
    dominant_threshold = np.maximum.reduce(
        [np.full(n, 0.5), np.minimum(2.0 * s + 0.1, s + 0.75 * (1.0 - s)), s + _noise_margin(s, b)]
    )
    return Signals(
        steps=chunk.steps,
        loss=col("loss"),
        grad=grad,
        grad_ref=grad_ref,
        grad_ratio=grad_ratio,
        logit_max=logit_max,
        logit_min=logit_min,
        logit_mean=logit_mean,
        logit_raw=raw,
        logit_scaled=raw / config.temperature,
        entropy=col("entropy_mean"),
        target_entropy_low=np.fmin(profile.target_entropy_mean, col("target_entropy_mean")),
        onehot=col("onehot_frac"),
        target_onehot=target_onehot,
        onehot_threshold=onehot_threshold,
        onehot_critical=onehot_critical,
        deploy_entropy=col("deploy_entropy_mean"),
        deploy_onehot=col("deploy_onehot_frac"),
        deploy_onehot_threshold=float(deploy_thr),
        deploy_onehot_critical=float(deploy_crit),
        top_share=top_share,
        top_class=top_class,
        top_target_share=s,
        dominant_threshold=dominant_threshold,
        eff_classes=col("hist_eff_classes"),
        output_diversity=col("output_diversity"),
        target_diversity=col("target_diversity"),
        diversity_ratio=diversity_ratio,
    )


Masks = tuple[np.ndarray, np.ndarray, np.ndarray]  # (raise, critical, clear), each (N,) bool


def conditions(sig: Signals, config: TrainConfig, profile: DataProfile) -> dict[str, Masks]:
    """Each rule's raise, critical and clear conditions; clear uses a lower threshold (hysteresis)."""
    never = np.zeros(len(sig.steps), dtype=bool)
    ln_c = math.log(profile.num_classes)
    ent, t_low = sig.entropy, sig.target_entropy_low

    bad_loss, bad_grad = ~np.isfinite(sig.loss), ~np.isfinite(sig.grad)
    grad_on = sig.grad_ratio > GRAD_RATIO_WARN
    if config.max_grad_norm is not None:
        grad_on &= sig.grad > GRAD_CLIP_FACTOR * config.max_grad_norm
    dominant = sig.top_share > sig.dominant_threshold
    # too uniform relative to the raw targets (the data, not the smoothed fit: smoothing that
    # flattens peaky targets past this is itself the over-smoothing): twice their entropy and
    # half a nat above it
    t_raw = profile.target_entropy_mean
    uniform_at = min(max(2.0 * t_raw, t_raw + 0.5), 0.95 * ln_c)
    uniform_on = (ent > uniform_at) & ~dominant
    uniform_clear = ent < max(1.6 * t_raw, t_raw + 0.35)
    # near-one-hot beyond the targets' share, and sharper than the targets on average
    sharper = ent < t_low
    onehot_on, onehot_crit = (sig.onehot > sig.onehot_threshold) & sharper, sig.onehot > sig.onehot_critical
    sharp_on = (ent < 0.5 * t_low) & (ent < t_low - 0.15)
    sharp_clear = (ent > 0.65 * t_low) | (ent > t_low - 0.1)
    return {
        "nonfinite_loss": (bad_loss, bad_loss, ~bad_loss),
        "nonfinite_gradients": (bad_grad, bad_grad, ~bad_grad),
        "exploding_gradients": (
            grad_on & np.isfinite(sig.grad),
            grad_on & (sig.grad_ratio > GRAD_RATIO_CRIT),
            sig.grad_ratio < GRAD_RATIO_CLEAR,
        ),
        "exploding_logits": (
            # large logits whose predictions are no sharper than the targets are the fit (cross-entropy
            # on near-one-hot targets has no finite optimum); past LOGIT_CRIT the softmax saturates in
            # float32 whatever the targets
            ((sig.logit_scaled > LOGIT_WARN) & (ent < t_low)) | (sig.logit_scaled > LOGIT_CRIT),
            sig.logit_scaled > LOGIT_CRIT,
            sig.logit_scaled < LOGIT_CLEAR,
        ),
        "one_hot": (onehot_on, onehot_crit, sig.onehot < sig.onehot_threshold - 0.1),
        "dominant_class": (
            dominant,
            sig.top_share > np.maximum(0.95, sig.dominant_threshold),
            sig.top_share < sig.dominant_threshold - 0.1,
        ),
        "low_entropy": (sharp_on, never, sharp_clear),
        "too_uniform": (uniform_on, never, uniform_clear),
    }


Described = tuple[str, dict[str, float]]  # one sentence (no closing period) and the evidence


def _nonfinite_loss(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    loss = float(sig.loss[i])
    return f"The loss is {loss} at step {sig.steps[i]}, so training has diverged", {"loss": loss}


def _nonfinite_gradients(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    grad = float(sig.grad[i])
    return f"The gradient norm is {grad} at step {sig.steps[i]}", {"grad_norm": grad}


def _exploding_gradients(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    ev = {"grad_norm": float(sig.grad[i]), "running_median": sig.grad_ref, "ratio": float(sig.grad_ratio[i])}
    if config.max_grad_norm is not None:
        ev["max_grad_norm"] = float(config.max_grad_norm)
    msg = f"The gradient norm is {ev['grad_norm']:.3g}, {ev['ratio']:.0f}× its running median {sig.grad_ref:.3g}"
    return msg, ev


def _exploding_logits(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    t = config.temperature
    ev = {
        "logit_scaled": float(sig.logit_scaled[i]),
        "logit_raw": float(sig.logit_raw[i]),
        "logit_max": float(sig.logit_max[i]),
        "logit_min": float(sig.logit_min[i]),
        "temperature": float(t),
    }
    limit = LOGIT_CRIT if ev["logit_scaled"] > LOGIT_CRIT else LOGIT_WARN
    return (
        f"Logits reach ±{ev['logit_scaled']:.1f} as the softmax sees them (a sample's raw logit ±{ev['logit_raw']:.1f} "
        f"from its own mean, / T={t:g}), beyond ±{limit:g}",
        ev,
    )


def _one_hot(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    ev = {
        "onehot_frac": float(sig.onehot[i]),
        "target_onehot_frac": float(sig.target_onehot[i]),
        "entropy": float(sig.entropy[i]),
    }
    return (
        f"{ev['onehot_frac']:.0%} of predictions are near one-hot (max probability > 0.99) against "
        f"{ev['target_onehot_frac']:.0%} of the targets",
        ev,
    )


def _dominant_class(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    ev = {
        "class": float(sig.top_class[i]),
        "predicted_share": float(sig.top_share[i]),
        "target_share": float(sig.top_target_share[i]),
        "effective_classes": float(sig.eff_classes[i]),
        "diversity_ratio": float(sig.diversity_ratio[i]),
        "entropy": float(sig.entropy[i]),
    }
    return (
        f"Class {sig.top_class[i]} takes {ev['predicted_share']:.0%} of the predictions against a target share "
        f"of {ev['target_share']:.0%} ({ev['effective_classes']:.1f} effective classes of {profile.num_classes}, "
        f"output diversity {ev['diversity_ratio']:.0%} of the targets', entropy {ev['entropy']:.2f} nats)",
        ev,
    )


def _low_entropy(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    ev = {"entropy": float(sig.entropy[i]), "target_entropy": float(sig.target_entropy_low[i])}
    return (
        f"Mean prediction entropy {ev['entropy']:.3f} nats is far below the targets' own "
        f"{ev['target_entropy']:.3f} nats",
        ev,
    )


def _too_uniform(i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    ln_c = math.log(profile.num_classes)
    ev = {
        "entropy": float(sig.entropy[i]),
        "max_entropy": ln_c,
        "target_entropy": profile.target_entropy_mean,
        "diversity_ratio": float(sig.diversity_ratio[i]),
    }
    return (
        f"Mean prediction entropy {ev['entropy']:.2f} nats is far above the targets' own {ev['target_entropy']:.2f} "
        f"nats (uniform is ln {profile.num_classes} = {ln_c:.2f}): the regularizers hold predictions flatter than "
        "the data",
        ev,
    )


_DESCRIBERS = {
    "nonfinite_loss": _nonfinite_loss,
    "nonfinite_gradients": _nonfinite_gradients,
    "exploding_gradients": _exploding_gradients,
    "exploding_logits": _exploding_logits,
    "one_hot": _one_hot,
    "dominant_class": _dominant_class,
    "low_entropy": _low_entropy,
    "too_uniform": _too_uniform,
}


def describe(kind: str, i: int, sig: Signals, config: TrainConfig, profile: DataProfile) -> Described:
    """One sentence with the numbers at row `i` (where the rule fired), and the evidence as floats."""
    return _DESCRIBERS[kind](i, sig, config, profile)


# --- the deployment view, judged on held-out predictions ---------------------------------------------
# Training batches are sharper than held-out data, and a batch's deployed entropy is noisy near any
# threshold: a collapse as deployed is a property of the predictions the model will serve, so it is read
# from each evaluation pass. Raised when the deployed predictions fall under half the targets' entropy
# (and 0.15 nats under it), or are near one-hot a quarter of the way past the targets' own share at
# that entropy, while the trained view is neither; critical past 70% of the way; cleared above 0.65 x.
DEPLOY_SHARPER, DEPLOY_CLEAR = 0.5, 0.65


def _collapsed_view(entropy: float, onehot: float, h_t: float, o_t: float) -> bool:
    sharp = entropy < DEPLOY_SHARPER * h_t and entropy < h_t - 0.15
    return sharp or (onehot >= o_t + ONEHOT_RAISE * (1.0 - o_t) and entropy < DEPLOY_SHARPER * h_t)


def deployed_view(metrics: dict[str, float], config: TrainConfig, profile: DataProfile) -> tuple[int, bool]:
    """(level, cleared) of the deployment view in one evaluation pass: level 0 fine, 1 collapsed, 2 critical."""
    keys = ("deploy_entropy_mean", "deploy_onehot_frac", "entropy_mean", "onehot_frac")
    if config.deploy_temperature == config.temperature or not all(k in metrics for k in keys):
        return 0, False
    h_t = float(metrics.get("target_entropy_mean", profile.target_entropy_mean))
    o_t = profile.target_onehot_frac
    h, o = float(metrics["deploy_entropy_mean"]), float(metrics["deploy_onehot_frac"])
    if not (math.isfinite(h) and math.isfinite(o)):
        return 0, False
    if _collapsed_view(float(metrics["entropy_mean"]), float(metrics["onehot_frac"]), h_t, o_t):
        return 0, False  # collapsed as trained too: the batch rules say so
    cleared = h > DEPLOY_CLEAR * h_t or h > h_t - 0.1
    if not _collapsed_view(h, o, h_t, o_t):
        return 0, cleared
    return (2 if o > o_t + ONEHOT_CRIT * (1.0 - o_t) else 1), False


def describe_deployed(metrics: dict[str, float], config: TrainConfig, profile: DataProfile) -> Described:
    t, td = config.temperature, config.deploy_temperature
    ev = {
        "entropy": float(metrics["entropy_mean"]),
        "onehot_frac": float(metrics["onehot_frac"]),
        "deploy_entropy": float(metrics["deploy_entropy_mean"]),
        "deploy_onehot_frac": float(metrics["deploy_onehot_frac"]),
        "target_entropy": float(metrics.get("target_entropy_mean", profile.target_entropy_mean)),
        "target_onehot_frac": profile.target_onehot_frac,
        "temperature": float(t),
        "deploy_temperature": float(td),
    }
    return (
        f"On held-out data, healthy at T={t:g} as trained (entropy {ev['entropy']:.2f} nats, "
        f"{ev['onehot_frac']:.0%} near one-hot), collapsed as deployed at T={td:g}: entropy "
        f"{ev['deploy_entropy']:.2f} nats against the targets' {ev['target_entropy']:.2f}, "
        f"{ev['deploy_onehot_frac']:.0%} near one-hot against {ev['target_onehot_frac']:.0%} of the targets",
        ev,
    )
