"""trainer.doctor.prescribe: which warning's advice the next attempt follows, and when the lineage stops."""

from __future__ import annotations

from dataclasses import replace

from factories import make_warning

from trainer import Advice, preset
from trainer.doctor import HEALTHY, prescribe


def test_the_first_actionable_warning_is_followed_and_a_tried_config_is_skipped() -> None:
    config = preset("collapse-prone").to_dict()
    hotter = make_warning(step=5)  # temperature -> 5
    clip = replace(make_warning(step=9, kind="exploding_logits"), advice=Advice("Clip", {"max_grad_norm": 0.5}))
    note = replace(make_warning(step=1, kind="low_entropy"), severity="info", advice=Advice("x", {"lr": 1e-4}))
    step = prescribe(config, [note, hotter, clip])
    assert (step.overrides, step.warning) == ({"temperature": 5.0}, hotter), "info warnings are not acted on"
    tried = [{**config, "temperature": 5.0}]
    assert prescribe(config, [hotter, clip], tried).overrides == {"max_grad_norm": 0.5}
    ran_out = prescribe(config, [hotter, clip], [*tried, {**config, "max_grad_norm": 0.5}])
    assert ran_out.overrides is None and ran_out.reason.startswith("advice ran out: one_hot")


def test_no_warning_is_healthy_and_advice_without_changes_runs_out() -> None:
    config = preset("fixed").to_dict()
    assert prescribe(config, []).healthy and prescribe(config, []).reason == HEALTHY
    bare = replace(make_warning(), advice=Advice("Check the data", {}))
    assert prescribe(config, [bare]).reason.startswith("advice ran out: one_hot (Check the data)")
