"""The tuning ladder: the next rung from every position, exhaustion, and the direction each diagnosis needs."""

from __future__ import annotations

import math

import pytest

from trainer.advice import ADVICE_KINDS, advise, ladder_position
from trainer.config import TrainConfig, preset
from trainer.detector_rules import RULES

LADDER_CASES = [
    # (knob, current value, next stronger value or None when exhausted)
    ("label_smoothing", 0.0, 0.15),
    ("label_smoothing", 0.15, 0.2),
    ("label_smoothing", 0.17, 0.2),
    ("label_smoothing", 0.2, 0.25),
    ("label_smoothing", 0.25, None),
    ("label_smoothing", 0.4, None),
    ("temperature", 1.0, 4.0),
    ("temperature", 4.0, 5.0),
    ("temperature", 5.5, 6.0),
    ("temperature", 6.0, None),
    ("entropy_weight", 0.0, 5.0),
    ("entropy_weight", 5.0, 7.0),
    ("entropy_weight", 7.0, 10.0),
    ("entropy_weight", 10.0, None),
    ("min_entropy", 1.0, 1.5),
    ("min_entropy", 1.5, 1.8),
    ("min_entropy", 1.8, 2.0),
    ("min_entropy", 2.0, None),
    ("max_grad_norm", None, 1.0),
    ("max_grad_norm", 5.0, 1.0),
    ("max_grad_norm", 1.0, 0.8),
    ("max_grad_norm", 0.9, 0.8),
    ("max_grad_norm", 0.8, 0.5),
    ("max_grad_norm", 0.5, None),
    ("max_grad_norm", 0.1, None),
    ("final_layer_weight_decay", 0.0, 0.01),
    ("final_layer_weight_decay", 0.01, 0.02),
    ("final_layer_weight_decay", 0.02, 0.05),
    ("final_layer_weight_decay", 0.05, None),
]


@pytest.mark.parametrize(("knob", "value", "expected"), LADDER_CASES)
def test_next_rung_from_every_position(knob, value, expected):
    position = ladder_position(preset("fixed").replace(**{knob: value}))[knob]
    assert position["value"] == value
    assert position["next"] == expected


def test_rung_counts_how_far_up_the_ladder_a_value_is():
    pos = ladder_position(preset("collapse-prone"))
    assert pos["label_smoothing"]["rung"] == 0 and pos["max_grad_norm"]["rung"] == 0
    pos = ladder_position(preset("fixed").replace(label_smoothing=0.22, max_grad_norm=0.5))
    assert pos["label_smoothing"]["rung"] == 2 and pos["max_grad_norm"]["rung"] == 3
    assert pos["entropy_penalty"] == {"value": "quadratic", "rung": 1, "next": None, "ladder": ["quadratic"]}
    assert pos["lr"]["next"] == pytest.approx(preset("fixed").lr * 0.3)


def test_advice_proposes_the_first_knob_with_a_rung_left():
    config = preset("fixed").replace(label_smoothing=0.25)  # one_hot's first knob is at the top
    advice = advise("one_hot", config)
    assert advice.overrides == {"temperature": 5.0}
    assert "temperature" in advice.message and "4" in advice.message and "5" in advice.message
    assert advise("one_hot", preset("fixed").replace(label_smoothing=0.17)).overrides == {"label_smoothing": 0.2}


def test_linear_to_quadratic_penalty_is_a_rung_before_a_heavier_weight():
    config = preset("collapse-prone")
    assert advise("low_entropy", config).overrides == {"entropy_penalty": "quadratic"}
    assert advise("low_entropy", config.replace(entropy_penalty="quadratic")).overrides == {"entropy_weight": 5.0}


def test_every_knob_exhausted_means_lowering_the_learning_rate():
    top = preset("fixed").replace(
        label_smoothing=0.25, temperature=6.0, entropy_weight=10.0, min_entropy=2.0, final_layer_weight_decay=0.05,
        max_grad_norm=0.5, lr=0.3,
    )  # fmt: skip
    for kind in ("one_hot", "low_entropy", "exploding_logits", "exploding_gradients"):
        advice = advise(kind, top)
        assert advice.overrides == {"lr": pytest.approx(0.09)}, kind
        assert "learning rate" in advice.message and "0.3" in advice.message and "0.09" in advice.message


def test_optimisation_collapses_put_the_learning_rate_first_in_geometric_steps():
    # clipping first helped 0 of 18 mode collapses: with or without it, the step size comes first
    for name in ("fixed", "collapse-prone"):
        cfg = preset(name)
        for kind in ("dominant_class", "exploding_logits"):
            assert advise(kind, cfg).overrides == {"lr": pytest.approx(cfg.lr * 0.3)}, (name, kind)
    assert "learning rate" in advise("dominant_class", preset("fixed")).message


def test_a_collapse_hidden_by_the_temperature_trains_at_the_deployment_temperature():
    cfg = preset("fixed")  # T = 4, deployed at T = 1
    advice = advise("deployed_collapse", cfg)
    # the penalty's 1.5-nat threshold was sized for T = 4: at T = 1 it is capped at each target's entropy
    assert advice.overrides == {"temperature": 1.0, "cap_entropy_at_target": True}
    assert "deployment temperature" in advice.message and "cap_entropy_at_target" in advice.message
    no_penalty = cfg.replace(entropy_weight=0.0)
    assert advise("deployed_collapse", no_penalty).overrides == {"temperature": 1.0}
    assert advise("deployed_collapse", cfg.replace(temperature=1.0)).overrides == {"label_smoothing": 0.2}


def test_following_the_advice_walks_every_ladder_to_the_learning_rate():
    for kind in ("one_hot", "low_entropy", "exploding_logits"):
        config, seen = preset("collapse-prone"), []
        for _ in range(30):
            advice = advise(kind, config)
            seen.append(advice.overrides)
            if "lr" in advice.overrides:
                break
            config = config.replace(**advice.overrides)  # every proposal is a valid config
        assert "lr" in seen[-1], f"{kind} never reached the learning rate: {seen}"
        assert len(seen) == len({tuple(o.items()) for o in seen}), f"{kind} repeated a step: {seen}"


def test_too_uniform_steps_regularizers_down():
    base = preset("fixed")  # trained at T = 4, used at T = 1: loosening at T = 4 sharpens the deployed view
    assert advise("too_uniform", base).overrides == {"temperature": 1.0, "cap_entropy_at_target": True}
    at_deploy = base.replace(temperature=1.0)
    assert advise("too_uniform", at_deploy).overrides == {"cap_entropy_at_target": True}
    # trained cooler than it is used: the deployed view is the flatter one, the temperature stays
    cool = base.replace(temperature=1.0, deploy_temperature=2.0)
    assert advise("too_uniform", cool).overrides == {"cap_entropy_at_target": True}
    capped = at_deploy.replace(cap_entropy_at_target=True)
    advice = advise("too_uniform", capped)
    assert advice.overrides == {"label_smoothing": 0.05} and "lower" in advice.message
    assert advise("too_uniform", capped.replace(label_smoothing=0.05)).overrides == {"label_smoothing": 0.0}
    no_smoothing = capped.replace(label_smoothing=0.0, min_entropy=2.0, entropy_weight=10.0)
    assert advise("too_uniform", no_smoothing).overrides == {"min_entropy": 1.8}
    at_floor = no_smoothing.replace(min_entropy=1.2)
    assert advise("too_uniform", at_floor).overrides == {"entropy_weight": 7.0}


def test_too_uniform_never_raises_a_regularizer():
    config = preset("fixed")
    for _ in range(20):
        overrides = advise("too_uniform", config).overrides
        if not overrides:
            break
        for field, new in overrides.items():
            old = getattr(config, field)
            if isinstance(new, float):
                assert new < old, (field, old, new)
        config = config.replace(**overrides)
    final = advise("too_uniform", config)  # the ladder bottoms out instead of looping or lowering the lr
    assert final.overrides == {} and "bottom of the ladder" in final.message


@pytest.mark.parametrize("num_classes", [4, 6, 8])
def test_min_entropy_is_never_proposed_above_ln_c(num_classes):
    ln_c = math.log(num_classes)
    config = TrainConfig().replace(data={"num_classes": num_classes}, min_entropy=min(1.0, ln_c - 0.1))
    proposed = []
    for _ in range(30):
        advice = advise("low_entropy", config)
        if "lr" in advice.overrides:
            break
        proposed += [v for k, v in advice.overrides.items() if k == "min_entropy"]
        config = config.replace(**advice.overrides)
    assert all(v <= ln_c for v in proposed)
    if num_classes == 8:
        assert proposed == [1.5, 1.8, 2.0]


def test_every_detector_kind_has_advice_with_a_change():
    kinds = {rule.kind for rule in RULES} | {"val_loss_jump", "deployed_collapse"}  # the last two: from evaluations
    assert kinds == set(ADVICE_KINDS)
    for name in ("fixed", "collapse-prone"):
        for kind in kinds:
            advice = advise(kind, preset(name))
            assert advice.overrides and advice.message, (name, kind)
            preset(name).replace(**advice.overrides)  # valid


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="bogus"):
        advise("bogus", preset("fixed"))
