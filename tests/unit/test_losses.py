"""Each term of the objective against a value computed by hand or by a direct reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import (
    balanced_class_weights,
    entropy,
    entropy_penalty,
    objective,
    smooth_targets,
    soft_cross_entropy,
)


def _loop_ce(log_probs, targets, weights):
    num = den = 0.0
    for i in range(targets.shape[0]):
        for c in range(targets.shape[1]):
            num += weights[c] * targets[i, c] * -log_probs[i, c]
            den += weights[c] * targets[i, c]
    return num / den


def test_smoothing_mixes_uniform_once():
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    s = smooth_targets(t, 0.2)
    assert torch.allclose(s[0], torch.tensor([0.85, 0.05, 0.05, 0.05]))
    assert torch.allclose(s[1], torch.tensor([0.45, 0.45, 0.05, 0.05]))
    assert torch.allclose(s.sum(1), torch.ones(2))


def test_soft_ce_matches_pytorch_for_one_hot_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 1, 1])
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ours = soft_cross_entropy(F.log_softmax(logits, -1), F.one_hot(labels, 4).float(), w)
    assert torch.allclose(ours, F.cross_entropy(logits, labels, weight=w))
    unweighted = soft_cross_entropy(F.log_softmax(logits, -1), F.one_hot(labels, 4).float())
    assert torch.allclose(unweighted, F.cross_entropy(logits, labels))


def test_soft_ce_weighted_soft_targets_against_a_loop():
    torch.manual_seed(1)
    log_probs = F.log_softmax(torch.randn(5, 3), -1)
    t = torch.softmax(torch.randn(5, 3), -1)
    w = torch.tensor([1.0, 0.3, 2.5])
    assert soft_cross_entropy(log_probs, t, w).item() == pytest.approx(_loop_ce(log_probs, t, w).item(), rel=1e-5)


def test_balanced_weights_come_from_target_mass_not_argmax():
    # argmax is always class 0, but class 1 holds 40% of the mass
    t = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    w = balanced_class_weights(t)
    assert torch.allclose(w, torch.tensor([1 / (2 * 0.6), 1 / (2 * 0.4)]))
    assert (t.mean(0) * w).sum().item() == pytest.approx(1.0)


def test_entropy_in_nats():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    h = entropy(torch.log(p.clamp_min(1e-30)))
    assert h[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert h[1].item() == pytest.approx(math.log(4), abs=1e-6)


def test_entropy_penalty_linear_and_quadratic_per_sample_then_mean():
    h = torch.tensor([0.5, 1.0, 2.0])
    # shortfalls below 1.5: 1.0, 0.5, 0 -> linear mean 0.5; quadratic mean (1 + 0.25) / 3
    assert entropy_penalty(h, 1.5, "linear").item() == pytest.approx(0.5)
    assert entropy_penalty(h, 1.5, "quadratic").item() == pytest.approx(1.25 / 3)
    capped = entropy_penalty(h, torch.tensor([0.4, 1.5, 1.5]), "linear")
    assert capped.item() == pytest.approx(0.5 / 3)


def _objective(**overrides):
    torch.manual_seed(2)
    logits = torch.randn(8, 4) * 3
    targets = torch.softmax(torch.randn(8, 4) * 2, -1)
    head = torch.randn(4, 5)
    kw = dict(
        label_smoothing=0.1,
        temperature=2.0,
        entropy_weight=3.0,
        min_entropy=1.2,
        entropy_penalty_kind="quadratic",
        cap_entropy_at_target=False,
        class_weights=None,
        final_layer_weight_decay=0.05,
    )
    kw.update(overrides)
    return logits, targets, head, objective(logits, targets, head, **kw), kw


def test_objective_is_the_sum_of_its_named_terms_computed_directly():
    logits, targets, head, parts, _ = _objective()
    t = (1 - 0.1) * targets + 0.1 / 4
    p = torch.softmax(logits / 2.0, -1)
    ce = -(t * torch.log(p)).sum(1).mean()
    h = -(p * torch.log(p)).sum(1)
    ent = 3.0 * ((1.2 - h).clamp_min(0) ** 2).mean()
    l2 = 0.05 * (head**2).sum()
    assert parts.ce.item() == pytest.approx(ce.item(), rel=1e-5)
    assert parts.entropy_term.item() == pytest.approx(ent.item(), rel=1e-5)
    assert parts.final_l2.item() == pytest.approx(l2.item(), rel=1e-5)
    assert parts.total.item() == pytest.approx((ce + ent + l2).item(), rel=1e-5)
    assert set(parts.terms()) == {"loss", "loss_ce", "loss_entropy", "loss_final_l2"}


def test_temperature_scales_logits_before_softmax():
    logits, _, _, parts, _ = _objective(temperature=4.0)
    assert torch.allclose(parts.probs, torch.softmax(logits / 4.0, -1), atol=1e-6)


def test_cap_at_target_entropy_removes_penalty_when_prediction_matches_target():
    torch.manual_seed(3)
    targets = torch.softmax(torch.randn(4, 4) * 4, -1)  # peaky targets, entropy below 1.2
    logits = torch.log(targets)  # predictions equal to the targets at T=1
    kw = dict(
        label_smoothing=0.0,
        temperature=1.0,
        entropy_weight=5.0,
        min_entropy=1.2,
        entropy_penalty_kind="linear",
        class_weights=None,
        final_layer_weight_decay=0.0,
    )
    fights = objective(logits, targets, torch.zeros(4, 2), cap_entropy_at_target=False, **kw)
    capped = objective(logits, targets, torch.zeros(4, 2), cap_entropy_at_target=True, **kw)
    assert fights.entropy_term.item() > 0.1
    assert capped.entropy_term.item() == pytest.approx(0.0, abs=1e-5)
