"""The collapse detector on synthetic batch streams: quiet on healthy runs, each collapse caught once, on time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from trainer.config import preset
from trainer.detector import CollapseDetector
from trainer.records import BATCH_COLUMNS, BatchChunk, DataProfile, EvalRecord

C = 8
STEPS_PER_EPOCH = 25  # warm-up is then half an epoch, 12 batches; persistence a quarter, 6 rows
WARMUP = 12
Value = float | np.ndarray | Callable[[np.ndarray], np.ndarray]


def peaky_profile(entropy: float = 0.8, onehot: float = 0.4) -> DataProfile:
    """Targets that are themselves confident: low entropy and many one-hot rows."""
    share = [1.0 / C] * C
    return DataProfile(C, 2000, 400, 16, entropy, onehot, share, share)


# A healthy run at T=4 on peaky targets: raw logits ±15 (±3.75 scaled), entropy well above the
# targets' (the penalty holds it up), no one-hot predictions, a balanced histogram.
HEALTHY: dict[str, float] = {
    "loss": 1.2, "loss_ce": 1.0, "loss_entropy": 0.15, "loss_final_l2": 0.05,
    "logit_max": 15.0, "logit_min": -14.0, "logit_range": 29.0, "logit_mean": 0.0, "logit_std": 4.0,
    "logit_margin": 3.0, "logit_spread_max": 14.5, "entropy_mean": 1.3, "entropy_min": 0.6, "entropy_p10": 0.9,
    "target_entropy_mean": 1.0, "maxprob_mean": 0.6, "onehot_frac": 0.0, "target_onehot_frac": 0.4,
    "deploy_entropy_mean": 0.6, "deploy_maxprob_mean": 0.8, "deploy_onehot_frac": 0.3,
    "hist_top_share": 0.2, "hist_eff_classes": 7.6, "output_diversity": 0.15, "target_diversity": 0.3,
    "grad_norm": 0.5, "clipped": 0.0, "head_weight_norm": 4.0, "lr": 0.25, "samples_per_s": 1e4,
}  # fmt: skip


def make_chunk(steps: np.ndarray, columns: dict[str, Value], hist: Value | None = None) -> BatchChunk:
    """Rows for `steps`: HEALTHY values, overridden per column by a scalar, an array or a function of step."""
    rng = np.random.default_rng(int(steps[0]))
    n = len(steps)
    values = np.empty((n, len(BATCH_COLUMNS)))
    for j, name in enumerate(BATCH_COLUMNS):
        v = columns.get(name, HEALTHY[name])
        values[:, j] = v(steps) if callable(v) else v
    if "grad_norm" not in columns:  # healthy grad norms wobble
        values[:, BATCH_COLUMNS.index("grad_norm")] *= rng.uniform(0.7, 1.4, n)
    if hist is None:
        h = rng.dirichlet(np.full(C, 30.0), n)
    else:
        h = np.broadcast_to(hist(steps) if callable(hist) else hist, (n, C)).copy()
    return BatchChunk(steps=steps, epochs=steps // STEPS_PER_EPOCH, values=values, class_hist=h)


def run_stream(
    n: int, columns: dict[str, Value] | None = None, hist: Value | None = None, *, config=None, profile=None,
    chunk: int = 50,
) -> CollapseDetector:  # fmt: skip
    det = CollapseDetector(config or preset("fixed"), profile or peaky_profile(), STEPS_PER_EPOCH)
    for lo in range(0, n, chunk):
        det.observe_batches(make_chunk(np.arange(lo, min(n, lo + chunk)), columns or {}, hist))
    return det


def after(start: int, bad: float, good: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda s: np.where(s >= start, bad, good)


def kinds(det: CollapseDetector) -> list[str]:
    return [w.kind for w in det.warnings]


def one(det: CollapseDetector, kind: str):
    found = [w for w in det.warnings if w.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {kinds(det)}"
    return found[0]


def test_healthy_run_on_peaky_targets_raises_nothing():
    det = run_stream(600)
    assert det.warnings == []


def test_healthy_warm_up_with_wild_early_statistics_raises_nothing():
    # the warm-up looks alarming (uniform start, one class winning, sharp spikes short of critical), then settles
    early = {
        "entropy_mean": after(WARMUP, 1.3, 2.07),
        "onehot_frac": after(WARMUP, 0.0, 0.9),
        "logit_spread_max": after(WARMUP, 14.5, 60.0),
    }
    top = lambda s: np.where((s < WARMUP)[:, None], np.eye(C)[0], np.full(C, 1 / C))  # noqa: E731
    assert run_stream(200, early, top).warnings == []


def test_one_hot_predictions_no_sharper_than_the_targets_are_no_collapse():
    # peaky targets are 40% one-hot: 75% one-hot predictions at the targets' own entropy stay quiet
    det = run_stream(400, {"onehot_frac": after(120, 0.75, 0.0), "entropy_mean": 0.7, "target_entropy_mean": 0.7})
    assert "one_hot" not in kinds(det)


def test_one_hot_collapse_raised_once_at_its_first_step():
    det = run_stream(400, {"onehot_frac": after(120, 0.75, 0.0), "entropy_mean": after(120, 0.05, 1.3)})
    w = one(det, "one_hot")
    assert w.step == 120 and w.severity == "warning"
    assert w.evidence["onehot_frac"] == pytest.approx(0.75)
    assert w.advice is not None and w.advice.overrides == {"label_smoothing": 0.2}


def test_extreme_one_hot_is_critical():
    w = one(run_stream(300, {"onehot_frac": after(100, 0.97, 0.0), "entropy_mean": after(100, 0.05, 1.3)}), "one_hot")
    assert w.severity == "critical" and w.step == 100


def test_high_entropy_mode_collapse_is_caught_by_the_histogram():
    # smooth, near-constant output: entropy stays high (so no entropy rule helps), class 3 wins everywhere
    collapsed = {"output_diversity": after(150, 0.01, 0.15), "hist_eff_classes": after(150, 1.0, 7.6)}
    hist = lambda s: np.where((s >= 150)[:, None], np.eye(C)[3], np.full(C, 1 / C))  # noqa: E731
    det = run_stream(400, {**collapsed, "entropy_mean": after(150, 1.95, 1.3)}, hist)
    w = one(det, "dominant_class")
    assert w.step == 150 and w.severity == "critical"
    assert w.evidence["class"] == 3 and w.evidence["predicted_share"] == 1.0
    assert w.evidence["target_share"] == pytest.approx(1 / C)
    assert w.evidence["diversity_ratio"] < 0.1
    assert "lr" in w.advice.overrides or "max_grad_norm" in w.advice.overrides
    assert not {"low_entropy", "one_hot", "too_uniform"} & set(kinds(det))


def test_class_that_is_common_in_the_targets_may_be_common_in_the_predictions():
    share = [0.45] + [0.55 / 7] * 7
    profile = DataProfile(C, 2000, 400, 16, 0.8, 0.4, share, share)
    hist = np.array([0.6] + [0.4 / 7] * 7)
    assert run_stream(300, {}, hist, profile=profile).warnings == []


@pytest.mark.parametrize(("temperature", "raw", "fires"), [(1.0, 15.0, True), (4.0, 15.0, False), (4.0, 60.0, True)])
def test_exploding_logits_are_judged_after_temperature(temperature, raw, fires):
    config = preset("fixed").replace(temperature=temperature)
    # growing logits sharpen the predictions past the targets' 0.8 nats
    stream = {"logit_spread_max": after(100, raw, 5.0), "entropy_mean": after(100, 0.6, 1.3)}
    det = run_stream(300, stream, config=config)
    assert ("exploding_logits" in kinds(det)) == fires
    if fires:
        w = one(det, "exploding_logits")
        assert w.step == 100 and w.severity == "warning"
        assert w.evidence["logit_raw"] == raw and w.evidence["logit_scaled"] == pytest.approx(raw / temperature)


def test_logits_shifted_together_are_not_exploding():
    # softmax ignores a shift shared by a sample's logits: samples at +50 and at -50, each with a
    # spread of ±5, span 100 in the batch and are harmless at T=1 (the per-batch measure raised them)
    shifted = {"logit_max": 55.0, "logit_min": -55.0, "logit_mean": 0.0, "logit_spread_max": 5.0}
    assert run_stream(300, shifted, config=preset("fixed").replace(temperature=1.0)).warnings == []


def test_large_logits_that_fit_near_one_hot_targets_warn_only_past_saturation():
    # cross-entropy on near-one-hot targets has no finite optimum: logits of ±40 at T=1 whose predictions
    # are no sharper than the targets are the fit; past 100 float32's softmax saturates whatever the targets
    config, fit = preset("fixed").replace(temperature=1.0), {"entropy_mean": 1.0}
    assert "exploding_logits" not in kinds(run_stream(300, {**fit, "logit_spread_max": 40.0}, config=config))
    det = run_stream(300, {**fit, "logit_spread_max": after(100, 150.0, 40.0)}, config=config)
    assert [(w.severity, w.step) for w in det.warnings if w.kind == "exploding_logits"] == [("critical", 100)]


def test_logits_beyond_a_hundred_are_critical():
    det = run_stream(300, {"logit_spread_max": after(100, 500.0, 5.0)}, config=preset("fixed").replace(temperature=1.0))
    assert one(det, "exploding_logits").severity == "critical"


def test_critical_logits_fire_in_the_warm_up_at_their_onset():
    # logits / T past 100 from the second batch: not a transient to wait out
    det = run_stream(60, {"logit_spread_max": after(1, 2000.0, 5.0)}, chunk=10)
    w = one(det, "exploding_logits")
    assert (w.severity, w.step) == ("critical", 1)
    assert w.evidence["raised_at_step"] < 10, "within 10 batches of the onset"


def test_a_single_critical_row_does_not_make_a_warning_critical():
    spikes = lambda s: np.where(s < 100, 5.0, np.where(s % 7 == 0, 500.0, 60.0))  # noqa: E731
    det = run_stream(300, {"logit_spread_max": spikes, "entropy_mean": after(100, 0.6, 1.3)})
    assert [(w.severity, w.step) for w in det.warnings if w.kind == "exploding_logits"] == [("warning", 100)]


def test_a_collapse_from_the_first_batch_is_reported_from_its_onset_within_an_epoch():
    det = run_stream(200, {"onehot_frac": after(2, 0.8, 0.0), "entropy_mean": after(2, 0.05, 1.3)})
    w = one(det, "one_hot")
    assert w.step == 2, "the onset, not the end of the warm-up"
    assert w.evidence["raised_at_step"] - w.step < STEPS_PER_EPOCH


def test_growing_logits_escalate_from_warning_to_critical():
    config = preset("fixed").replace(temperature=1.0)
    det = run_stream(
        300,
        {
            "logit_spread_max": lambda s: np.where(s < 100, 5.0, np.where(s < 200, 20.0, 300.0)),
            "entropy_mean": after(100, 0.6, 1.3),
        },
        config=config,
    )
    raised = [(w.severity, w.step) for w in det.warnings if w.kind == "exploding_logits"]
    assert raised == [("warning", 100), ("critical", 200)]


def test_nonfinite_loss_is_critical_at_once_even_in_warm_up():
    det = run_stream(40, {"loss": lambda s: np.where(s == 7, np.nan, 1.0)}, chunk=10)
    w = one(det, "nonfinite_loss")
    assert (w.step, w.severity) == (7, "critical") and math.isnan(w.evidence["loss"])


def test_nonfinite_gradient_is_critical_at_once():
    w = one(run_stream(120, {"grad_norm": lambda s: np.where(s == 90, np.inf, 0.5)}), "nonfinite_gradients")
    assert (w.step, w.severity) == (90, "critical")


def test_gradient_explosion_against_its_running_median():
    config = preset("collapse-prone")  # no clipping
    det = run_stream(300, {"grad_norm": after(200, 80.0, 0.5)}, config=config)
    w = one(det, "exploding_gradients")
    assert w.step == 200 and w.evidence["ratio"] > 50
    assert w.advice.overrides == {"max_grad_norm": 1.0}


def test_single_gradient_spike_does_not_fire():
    det = run_stream(300, {"grad_norm": lambda s: np.where(s % 60 == 0, 80.0, 0.5)})
    assert "exploding_gradients" not in kinds(det)


def test_low_entropy_fires_against_soft_targets_only():
    soft = DataProfile(C, 2000, 400, 16, 1.2, 0.0, [1 / C] * C, [1 / C] * C)
    sharp = {"entropy_mean": after(100, 0.2, 1.3), "target_entropy_mean": 1.4}
    assert one(run_stream(300, sharp, profile=soft), "low_entropy").step == 100
    # the same predictions against peaky targets (0.1 nats) are a correct fit
    peaky = {"entropy_mean": 0.08, "target_entropy_mean": 0.1}
    assert "low_entropy" not in kinds(run_stream(300, peaky, profile=peaky_profile(entropy=0.1)))


def test_too_uniform_when_targets_are_peaky():
    det = run_stream(400, {"entropy_mean": after(200, 2.02, 1.3)})
    w = one(det, "too_uniform")
    assert w.step == 200 and w.evidence["max_entropy"] == pytest.approx(math.log(C))
    # trained at T=4 and used at T=1: loosening at T=4 would sharpen the deployed view
    assert w.advice.overrides == {"temperature": 1.0, "cap_entropy_at_target": True}


def test_too_uniform_is_relative_to_the_targets_not_to_ln_c():
    # peaky targets (0.1 nats) held at 1.5 nats: far from uniform (2.08), far flatter than the data
    peaky = peaky_profile(entropy=0.1)
    det = run_stream(400, {"entropy_mean": after(200, 1.5, 0.3), "target_entropy_mean": 0.1}, profile=peaky)
    assert one(det, "too_uniform").step == 200
    # the same entropy on smooth targets (1.3 nats) is a fit, not over-smoothing
    smooth = {"entropy_mean": 1.5, "target_entropy_mean": 1.3, "deploy_entropy_mean": 1.2, "deploy_onehot_frac": 0.0}
    assert run_stream(400, smooth, profile=peaky_profile(entropy=1.3, onehot=0.0)).warnings == []


def _deploy_eval(step: int, deploy_entropy: float, deploy_onehot: float, entropy: float = 1.6) -> EvalRecord:
    metrics = {
        "objective": 1.0, "entropy_mean": entropy, "onehot_frac": 0.0, "target_entropy_mean": 1.3,
        "deploy_entropy_mean": deploy_entropy, "deploy_onehot_frac": deploy_onehot,
    }  # fmt: skip
    return EvalRecord(step, step // 25, metrics, [1 / C] * C, [1 / C] * C, [[0] * C] * C)


def test_collapse_hidden_by_the_temperature_is_raised_for_the_deployed_view():
    # held-out predictions healthy at T=4 (entropy 1.6 against the targets' 1.3), collapsed at T=1
    profile = peaky_profile(entropy=1.3, onehot=0.0)
    det = CollapseDetector(preset("fixed"), profile, STEPS_PER_EPOCH)
    passes = [(25, 1.0, 0.0), (50, 0.8, 0.2), (75, 0.7, 0.4), (100, 0.4, 0.5), (125, 0.2, 0.9), (150, 0.2, 0.9)]
    raised = [det.observe_eval(_deploy_eval(*p)) for p in passes]
    assert [len(r) for r in raised] == [0, 0, 0, 1, 1, 0]
    w = raised[3][0]
    assert (w.kind, w.step, w.severity) == ("deployed_collapse", 100, "warning")
    assert w.evidence["deploy_onehot_frac"] == 0.5 and "T=4" in w.message and "T=1" in w.message
    assert w.advice.overrides == {"temperature": 1.0, "cap_entropy_at_target": True}
    assert raised[4][0].severity == "critical" and raised[4][0].message.startswith("Now critical")
    # cleared once the deployed entropy recovers, raised again when it falls
    assert det.observe_eval(_deploy_eval(175, 1.0, 0.0)) == []
    assert [w.step for w in det.observe_eval(_deploy_eval(200, 0.3, 0.6))] == [200]
    # deployed at the training temperature there is nothing hidden; collapsed as trained, the batch rules speak
    same = CollapseDetector(preset("fixed").replace(deploy_temperature=4.0), profile, STEPS_PER_EPOCH)
    assert same.observe_eval(_deploy_eval(100, 0.2, 0.9)) == []
    both = CollapseDetector(preset("fixed"), profile, STEPS_PER_EPOCH)
    assert both.observe_eval(_deploy_eval(100, 0.2, 0.9, entropy=0.3)) == []


def test_training_batches_sharper_than_the_targets_as_deployed_raise_nothing():
    # batches are sharper than held-out data: a deployed view under the targets' entropy on batches is no alarm
    stream = {"entropy_mean": 1.6, "deploy_entropy_mean": 0.3, "deploy_onehot_frac": 0.6}
    assert run_stream(300, stream, profile=peaky_profile(entropy=1.3, onehot=0.0)).warnings == []


def test_flickering_condition_never_fires():
    flicker = lambda s: np.where((s >= 100) & (s % 2 == 0), 0.9, 0.0)  # noqa: E731
    det = run_stream(500, {"onehot_frac": flicker, "entropy_mean": 1.3})
    assert det.warnings == []


def test_persisting_condition_is_raised_once_and_again_only_after_clearing():
    # a 5-batch dip at 180 is too short to clear it; 100 quiet batches from 250 do
    def onehot(s: np.ndarray) -> np.ndarray:
        first = (s >= 100) & (s < 250) & ~((s >= 180) & (s < 185))
        return np.where(first | (s >= 350), 0.75, 0.0)

    det = run_stream(500, {"onehot_frac": onehot, "entropy_mean": lambda s: np.where(onehot(s) > 0, 0.5, 1.3)})
    assert [(w.kind, w.step) for w in det.warnings] == [("one_hot", 100), ("one_hot", 350)]


def test_chunk_size_does_not_change_what_is_raised():
    cols = {
        "onehot_frac": after(123, 0.75, 0.0), "entropy_mean": after(123, 0.5, 1.3),
        "grad_norm": after(300, np.nan, 0.5),
    }  # fmt: skip
    a = [(w.kind, w.step, w.severity) for w in run_stream(400, cols, chunk=1).warnings]
    b = [(w.kind, w.step, w.severity) for w in run_stream(400, cols, chunk=97).warnings]
    assert a == b == [("one_hot", 123, "warning"), ("nonfinite_gradients", 300, "critical")]


def _eval(step: int, objective: float) -> EvalRecord:
    return EvalRecord(step, step // 25, {"objective": objective}, [1 / C] * C, [1 / C] * C, [[0] * C] * C)


def test_val_loss_jump_needs_two_passes_or_one_big_jump():
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    raised = [det.observe_eval(_eval(25 * (i + 1), v)) for i, v in enumerate([1.0, 0.8, 1.3, 0.9, 1.3, 1.4, 1.5])]
    assert [len(r) for r in raised] == [0, 0, 0, 0, 0, 1, 0]  # one jump alone at 75 is not enough
    assert raised[5][0].step == 125 and raised[5][0].kind == "val_loss_jump"
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    raised = [det.observe_eval(_eval(25 * (i + 1), v)) for i, v in enumerate([1.0, 0.5, 2.0])]
    assert raised[2] and raised[2][0].step == 75 and raised[2][0].evidence["ratio"] == pytest.approx(4.0)


def test_val_loss_jump_escalates_and_clears():
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    values = [1.0, 4.0, 30.0, 40.0, 1.1, 4.0]
    raised = [det.observe_eval(_eval(25 * (i + 1), v)) for i, v in enumerate(values)]
    assert [[w.severity for w in r] for r in raised] == [[], ["warning"], ["critical"], [], [], ["warning"]]
    assert raised[2][0].message.startswith("Now critical")


def test_nonfinite_validation_objective_is_critical():
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    assert det.observe_eval(_eval(25, 1.0)) == []
    (w,) = det.observe_eval(_eval(50, math.nan))
    assert (w.kind, w.severity, w.step) == ("val_loss_jump", "critical", 50)
    assert det.observe_eval(_eval(75, math.inf)) == []  # raised once while it lasts
    with pytest.raises(ValueError, match="objective"):
        det.observe_eval(EvalRecord(100, 4, {"soft_ce": 1.0}, [], [], []))


def test_wrong_class_histogram_width_is_a_clear_error():
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    chunk = make_chunk(np.arange(5), {})
    chunk.class_hist = chunk.class_hist[:, :3]
    with pytest.raises(ValueError, match="class_hist"):
        det.observe_batches(chunk)


def test_detector_costs_well_under_a_millisecond_per_row():
    det = CollapseDetector(preset("fixed"), peaky_profile(), STEPS_PER_EPOCH)
    chunks = [make_chunk(np.arange(lo, lo + 50), {}) for lo in range(0, 5000, 50)]
    started = time.perf_counter()
    for c in chunks:
        det.observe_batches(c)
    assert (time.perf_counter() - started) / 5000 < 2e-4
