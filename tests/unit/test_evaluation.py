"""Validation metrics against hand-computed values and explicit per-sample reference loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.evaluation import (
    accuracy,
    brier_score,
    class_histogram,
    confusion_matrix,
    entropy,
    evaluate_predictions,
    expected_calibration_error,
    kl_divergence,
    soft_cross_entropy,
)
from trainer.records import EVAL_METRICS


def _random_dists(rng: np.random.Generator, n: int, c: int, sharpness: float) -> np.ndarray:
    z = rng.standard_normal((n, c)) * sharpness
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_entropy_of_uniform_onehot_and_half_half_rows():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(entropy(p), [math.log(4), 0.0, math.log(2)], atol=1e-12)


def test_soft_cross_entropy_by_hand():
    probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]])
    targets = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    # row 1: -ln 0.5 = ln 2; row 2: -(0.5 ln 0.25 + 0.5 ln 0.25) = ln 4
    assert soft_cross_entropy(probs, targets) == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_soft_cross_entropy_clips_a_zero_prediction_instead_of_going_infinite():
    value = soft_cross_entropy(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))
    assert value == pytest.approx(-math.log(1e-12))


def test_kl_by_hand_and_zero_for_identical_distributions():
    t = np.array([[0.5, 0.5, 0.0]])
    p = np.array([[0.25, 0.25, 0.5]])
    assert kl_divergence(t, p) == pytest.approx(math.log(2))  # 0.5 ln 2 + 0.5 ln 2 + 0 log 0
    onehot = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert kl_divergence(onehot, onehot) == pytest.approx(0.0, abs=1e-12)  # 0 log 0 must not become NaN


def test_kl_equals_cross_entropy_minus_target_entropy():
    rng = np.random.default_rng(1)
    t, p = _random_dists(rng, 50, 6, 2.0), _random_dists(rng, 50, 6, 1.0)
    reference = sum(
        sum(ti * math.log(ti / pi) for ti, pi in zip(tr, pr, strict=True)) for tr, pr in zip(t, p, strict=True)
    )
    assert kl_divergence(t, p) == pytest.approx(reference / 50)
    assert kl_divergence(t, p) == pytest.approx(soft_cross_entropy(p, t) - entropy(t).mean())


def test_accuracy_compares_argmaxes():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
    targets = np.array([[0.6, 0.4], [0.6, 0.4], [0.0, 1.0], [0.1, 0.9]])
    assert accuracy(probs, targets) == pytest.approx(0.5)


def _ece_reference(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    """Bin b holds (b/n, (b+1)/n]; the first bin also holds a confidence of exactly 0."""
    n = len(probs)
    ece = signed = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for i in range(n):
            conf = max(probs[i])
            if lo < conf <= hi or (b == 0 and conf == lo):
                members.append(i)
        if not members:
            continue
        conf_b = sum(max(probs[i]) for i in members) / len(members)
        acc_b = sum(targets[i][int(np.argmax(probs[i]))] for i in members) / len(members)
        ece += len(members) / n * abs(acc_b - conf_b)
        signed += len(members) / n * (conf_b - acc_b)
    return ece, signed


def test_ece_matches_a_per_bin_loop_on_random_predictions():
    rng = np.random.default_rng(7)
    probs, targets = _random_dists(rng, 300, 8, 2.5), _random_dists(rng, 300, 8, 1.5)
    probs[0] = 0.0  # a zero confidence belongs to the first bin
    ece, signed = expected_calibration_error(probs, targets)
    ref_ece, ref_signed = _ece_reference(probs, targets)
    assert ece == pytest.approx(ref_ece, abs=1e-12)
    assert signed == pytest.approx(ref_signed, abs=1e-12)


def test_ece_puts_a_confidence_on_a_bin_edge_in_the_lower_bin():
    # 0.6 = 9/15 is the upper edge of bin 8, so it shares that bin with 0.58:
    # one bin, accuracy 1/2, confidence 0.59 -> ECE 0.09. Had 0.6 gone up a bin, ECE would be (0.42 + 0.6) / 2.
    probs = np.array([[0.58, 0.42], [0.6, 0.4]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    ece, signed = expected_calibration_error(probs, targets)
    assert ece == pytest.approx(0.09)
    assert signed == pytest.approx(0.09)


def test_signed_ece_is_positive_for_an_overconfident_model_and_negative_for_an_underconfident_one():
    targets = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    over = np.array([[0.9, 0.1]] * 10)  # 90% sure, right half the time
    ece, signed = expected_calibration_error(over, targets)
    assert (ece, signed) == (pytest.approx(0.4), pytest.approx(0.4))
    under = np.array([[0.55, 0.45]] * 5 + [[0.45, 0.55]] * 5)  # 55% sure, always right
    ece, signed = expected_calibration_error(under, targets)
    assert (ece, signed) == (pytest.approx(0.45), pytest.approx(-0.45))


def test_brier_score_by_hand():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    targets = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert brier_score(probs, targets) == pytest.approx((0.5 + 0.5) / 2)  # 0.25 + 0.25 per row


def test_class_histogram_and_confusion_matrix_rows_are_targets():
    np.testing.assert_allclose(class_histogram(np.array([0, 0, 2]), 3), [2 / 3, 0.0, 1 / 3])
    np.testing.assert_array_equal(class_histogram(np.array([], dtype=np.int64), 2), [0.0, 0.0])
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_evaluate_predictions_fills_every_metric_consistently():
    rng = np.random.default_rng(3)
    probs, targets = _random_dists(rng, 64, 5, 3.0), _random_dists(rng, 64, 5, 2.0)
    record = evaluate_predictions(probs.astype(np.float32), targets, objective=1.25, step=40, epoch=2)
    assert list(record.metrics) == list(EVAL_METRICS)
    assert (record.step, record.epoch) == (40, 2)
    m = record.metrics
    assert m["objective"] == 1.25
    assert m["soft_ce"] == pytest.approx(soft_cross_entropy(probs, targets), rel=1e-6)
    assert m["kl"] == pytest.approx(kl_divergence(targets, probs), rel=1e-5)
    assert m["accuracy"] == accuracy(probs, targets)
    assert (m["ece"], m["ece_signed"]) == pytest.approx(_ece_reference(probs, targets), rel=1e-5)
    assert m["brier"] == pytest.approx(brier_score(probs, targets), rel=1e-6)
    assert m["entropy_mean"] == pytest.approx(entropy(probs).mean(), rel=1e-6)
    assert m["target_entropy_mean"] == pytest.approx(entropy(targets).mean())
    assert m["maxprob_mean"] == pytest.approx(probs.max(axis=1).mean(), rel=1e-6)
    assert np.sum(record.confusion) == 64
    assert sum(record.pred_hist) == pytest.approx(1.0) and sum(record.target_hist) == pytest.approx(1.0)


def test_evaluate_predictions_shows_a_collapsed_model():
    targets = np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.3, 0.7], [0.0, 0.0, 1.0]])
    probs = np.array([[0.995, 0.004, 0.001], [0.99, 0.005, 0.005], [0.999, 0.0005, 0.0005], [0.5, 0.25, 0.25]])
    record = evaluate_predictions(probs, targets, objective=0.0, step=0, epoch=0)
    assert record.pred_hist == [1.0, 0.0, 0.0]  # every prediction is class 0
    assert record.target_hist == [0.25, 0.25, 0.5]
    assert record.metrics["onehot_frac"] == pytest.approx(0.5)  # 0.995 and 0.999; 0.99 itself is not > 0.99
    assert record.metrics["accuracy"] == pytest.approx(0.25)
    assert record.confusion == [[1, 0, 0], [1, 0, 0], [2, 0, 0]]


def test_evaluate_predictions_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        evaluate_predictions(np.ones((3, 4)) / 4, np.ones((3, 5)) / 5, objective=0.0, step=0, epoch=0)
