"""The diagnosis benchmark's ground truth on predictions made by hand, and its --quick bank end to end."""

import re

import numpy as np
import pytest

from bench.ground_truth import judge, onset

TARGETS = {"target_entropy_mean": 1.2}


def _metrics(entropy: float, onehot: float, deploy_entropy: float | None = None, deploy_onehot: float | None = None):
    return {
        **TARGETS, "entropy_mean": entropy, "onehot_frac": onehot, "kl": 0.1, "deploy_kl": 0.1,
        "deploy_entropy_mean": entropy if deploy_entropy is None else deploy_entropy,
        "deploy_onehot_frac": onehot if deploy_onehot is None else deploy_onehot,
    }  # fmt: skip


UNIFORM_HIST = [1 / 8] * 8


def test_predictions_like_the_targets_are_healthy():
    assert judge("completed", _metrics(1.25, 0.0), UNIFORM_HIST, UNIFORM_HIST, 0.0).healthy


def test_one_hot_as_deployed_only_is_a_collapse():
    v = judge("completed", _metrics(1.6, 0.0, deploy_entropy=0.3, deploy_onehot=0.4), UNIFORM_HIST, UNIFORM_HIST, 0.0)
    assert v.labels == ["one_hot_deployed", "sharp_deployed"] and v.collapsed


def test_one_class_taking_the_predictions_is_mode_collapse_even_at_high_entropy():
    hist = [0.9] + [0.1 / 7] * 7
    assert judge("completed", _metrics(1.9, 0.0), hist, UNIFORM_HIST, 0.0).labels == ["mode"]


def test_too_uniform_is_relative_to_the_targets():
    peaky = {"target_entropy_mean": 0.2}
    m = {**_metrics(1.5, 0.0), **peaky}
    assert judge("completed", m, UNIFORM_HIST, UNIFORM_HIST, 0.7).labels == ["too_uniform"]
    assert not judge("completed", m, UNIFORM_HIST, UNIFORM_HIST, 0.7).collapsed


def test_a_diverged_run_is_collapsed():
    assert judge("diverged", None, [], [], 0.0).labels == ["diverged"]


def test_onset_is_where_the_condition_starts_to_hold_for_good():
    steps = np.arange(100)
    cond = (steps >= 40) | (steps == 5)
    assert onset(steps, cond) == 40
    assert onset(steps, np.zeros(100, bool)) is None


@pytest.mark.slow
def test_the_quick_bank_runs_and_reports_every_figure(monkeypatch):
    from bench import diagnosis

    monkeypatch.setenv("COLLAPSEWATCH_BENCH_NO_RECORD", "1")
    lines = diagnosis.main(["--quick", "--no-table", "--workers", "2"])
    text = "\n".join(lines)
    assert text.startswith("runs: 8;"), text
    for figure in ("detection", "false alarms", "latency", "advice:"):
        assert figure in text
    # on this bank the lr 0.3 runs collapse into one class by the ground truth, and are detected
    detection = next(line for line in lines if line.startswith("detection"))
    found, collapsed = map(int, re.search(r"(\d+)/(\d+) =", detection).groups())
    assert collapsed > 0 and found > 0, detection
