"""The ground truth the diagnosis benchmark judges the detector by: computed from a final model's validation
predictions and the raw targets alone, never from the detector or its thresholds.

Per view (as trained, softmax(z / T); as deployed, softmax(z / deploy_temperature)), with H the mean
entropy in nats and O the share of rows whose max probability is > 0.99, both for predictions and targets:
- one-hot collapse: O_pred >= O_t + 0.25 (1 - O_t) and H_pred < 0.5 H_t (in either view);
- too sharp: H_pred < 0.5 H_t and H_pred < H_t - 0.15 (in either view; the report's "1.31 -> 0.56 nats");
- mode collapse: one class takes more than max(0.5, 2 s + 0.1) of the argmax predictions, s its share of
  the targets' argmax;
- too uniform (as trained): H_pred > max(2 H_t, H_t + 0.5);
- diverged: the run ended with a non-finite loss;
- saturated: the centred logits / T (a recorded batch statistic) passed 100 in 5 consecutive batches at any
  point. Past that float32's softmax rounds to exact zeros and ones and its gradients vanish, whatever the
  targets: training was numerically broken even where the final predictions look fine.
A run is healthy when none holds. `batch_conditions` applies the same formulas to each batch's statistics,
to find the onset of a collapse for the latency figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ONEHOT_ROOM, SHARPER = 0.25, 0.5
SATURATED, SATURATED_RUN = 100.0, 5


@dataclass
class Verdict:
    labels: list[str]  # empty when healthy
    evidence: dict[str, float]

    @property
    def healthy(self) -> bool:
        return not self.labels

    @property
    def collapsed(self) -> bool:
        return bool(set(self.labels) - {"too_uniform"})


def _onehot(o_pred: float, h_pred: float, o_t: float, h_t: float) -> bool:
    return o_pred >= o_t + ONEHOT_ROOM * (1.0 - o_t) and h_pred < SHARPER * h_t


def _uniform(h_pred: float, h_t: float) -> bool:
    return h_pred > max(2.0 * h_t, h_t + 0.5)


def _mode(pred_hist: np.ndarray, target_hist: np.ndarray) -> bool:
    top = int(np.argmax(pred_hist))
    return float(pred_hist[top]) > max(0.5, 2.0 * float(target_hist[top]) + 0.1)


def judge(
    status: str,
    metrics: dict[str, float] | None,
    pred_hist,
    target_hist,
    target_onehot: float,
    saturated: bool = False,
) -> Verdict:
    """The verdict on one run from its final validation pass."""
    if status == "diverged" or metrics is None or not np.isfinite(metrics.get("kl", np.nan)):
        return Verdict(["diverged"], {})
    h_t = metrics["target_entropy_mean"]
    labels = []
    if _onehot(metrics["onehot_frac"], metrics["entropy_mean"], target_onehot, h_t):
        labels.append("one_hot")
    if _onehot(metrics["deploy_onehot_frac"], metrics["deploy_entropy_mean"], target_onehot, h_t):
        labels.append("one_hot_deployed")
    for name, h in (("sharp", metrics["entropy_mean"]), ("sharp_deployed", metrics["deploy_entropy_mean"])):
        if h < SHARPER * h_t and h < h_t - 0.15:
            labels.append(name)
    if _mode(np.asarray(pred_hist), np.asarray(target_hist)):
        labels.append("mode")
    if _uniform(metrics["entropy_mean"], h_t):
        labels.append("too_uniform")
    if saturated:
        labels.append("saturated")
    evidence = {
        k: float(metrics[k])
        for k in ("entropy_mean", "deploy_entropy_mean", "onehot_frac", "deploy_onehot_frac", "kl", "deploy_kl")
    }
    evidence.update(target_entropy=h_t, target_onehot=target_onehot, top_share=float(np.max(pred_hist)))
    return Verdict(labels, evidence)


def batch_conditions(cols: dict[str, np.ndarray], hist: np.ndarray, h_t: float, o_t: float, shares) -> np.ndarray:
    """Per recorded batch: does any collapse condition (not too_uniform) hold on that batch's statistics?"""
    sharp = [(h < SHARPER * h_t) & (h < h_t - 0.15) for h in (cols["entropy_mean"], cols["deploy_entropy_mean"])]
    trained = (cols["onehot_frac"] >= o_t + ONEHOT_ROOM * (1 - o_t)) & (cols["entropy_mean"] < SHARPER * h_t)
    deployed = (cols["deploy_onehot_frac"] >= o_t + ONEHOT_ROOM * (1 - o_t)) & (
        cols["deploy_entropy_mean"] < SHARPER * h_t
    )
    trained |= sharp[0]
    deployed |= sharp[1]
    top = np.argmax(np.nan_to_num(hist, nan=-1.0), axis=1)
    s = np.asarray(shares)[top]
    mode = hist[np.arange(len(top)), top] > np.maximum(0.5, 2 * s + 0.1)
    return trained | deployed | mode | ~np.isfinite(cols["loss"])


def saturation_onset(steps: np.ndarray, logit_spread_max: np.ndarray, temperature: float) -> int | None:
    """The first step of 5 consecutive recorded batches whose centred logits / T pass 100, or None."""
    extreme = np.asarray(logit_spread_max) / temperature > SATURATED
    runs = np.convolve(extreme.astype(int), np.ones(SATURATED_RUN, dtype=int), mode="valid") == SATURATED_RUN
    return int(steps[int(np.argmax(runs))]) if runs.any() else None


def onset(steps: np.ndarray, condition: np.ndarray, hold: float = 0.9) -> int | None:
    """The first step from which the condition holds in at least `hold` of the remaining batches."""
    if not condition.any():
        return None
    rest = np.cumsum(condition[::-1])[::-1] / np.arange(len(condition), 0, -1)
    ok = np.flatnonzero((rest >= hold) & condition)
    return int(steps[ok[0]]) if ok.size else None
