"""Every config field reaches the training step: change one field, and what the step computes changes.

A new field without a probe here fails `test_every_field_has_a_probe`, so no value can be silently
ignored the way the design's original config value was.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from trainer import DataSpec, ListSink, TrainConfig, from_dict, train
from trainer.loop import PREPARATION_CHECKS

# Penalty active from the first step (T=0.2 sharpens the untrained output below h_min),
# imbalanced data so class weights matter, two epochs of 4 batches each.
BASE = {
    "temperature": 0.2,
    "min_entropy": 2.0,
    "hidden_sizes": [16],
    "batch_size": 32,
    "epochs": 2,
    "device": "cpu",
    "lr": 0.01,
    "data": {"n_samples": 160, "n_features": 6, "imbalance": 4.0},
}


def run(overrides: dict, steps: int | None = None, data: dict | None = None) -> ListSink:
    data = {**BASE["data"], **overrides.get("data", {})} if data is None else data
    cfg = from_dict({**BASE, **overrides, "data": data})
    sink = ListSink()
    calls = iter(range(-PREPARATION_CHECKS, 10**9))  # the calls before the first step do not count
    result = train(cfg, sink, should_stop=(lambda: next(calls) >= steps) if steps else None)
    assert result.status in ("completed", "cancelled"), result.error
    assert result.config == cfg.to_dict(), "the effective config is exactly what ran"
    assert sink.info is not None and sink.info.config == cfg.to_dict()
    return sink


def first(name: str, step: int = 0) -> Callable[[ListSink], float]:
    return lambda s: float(s.column(name)[list(s.steps).index(step)])


def n_steps(s: ListSink) -> int:
    return len(s.steps)


# field -> (override, what to compare, steps to run); head_weight_norm is the norm the step's loss
# saw, before its update, so an optimiser setting shows in it one step later
PROBES: dict[str, tuple[dict, Callable[[ListSink], object], int | None]] = {
    "label_smoothing": ({"label_smoothing": 0.3}, first("target_entropy_mean"), 1),
    "temperature": ({"temperature": 0.5}, first("entropy_mean"), 1),
    "deploy_temperature": ({"deploy_temperature": 2.0}, first("deploy_entropy_mean"), 1),
    "entropy_weight": ({"entropy_weight": 9.0}, first("loss_entropy"), 1),
    "min_entropy": ({"min_entropy": 1.0}, first("loss_entropy"), 1),
    "entropy_penalty": ({"entropy_penalty": "linear"}, first("loss_entropy"), 1),
    "cap_entropy_at_target": ({"cap_entropy_at_target": True}, first("loss_entropy"), 1),
    "class_weights": ({"class_weights": None}, first("loss_ce"), 1),
    "max_grad_norm": ({"max_grad_norm": 1e-3}, first("head_weight_norm", 1), 2),
    "weight_decay": ({"weight_decay": 0.5}, first("head_weight_norm", 1), 2),
    "final_layer_weight_decay": ({"final_layer_weight_decay": 0.5}, first("loss_final_l2"), 1),
    "lr": ({"lr": 0.05}, first("head_weight_norm", 1), 2),
    "optimizer": ({"optimizer": "sgd"}, first("head_weight_norm", 1), 2),
    "momentum": ({"optimizer": "sgd", "momentum": 0.0}, first("head_weight_norm", 2), 3),
    "lr_schedule": ({"lr_schedule": "cosine"}, first("lr", 3), 4),
    "epochs": ({"epochs": 3}, n_steps, None),
    "batch_size": ({"batch_size": 16}, n_steps, None),
    "seed": ({"seed": 7}, first("logit_max"), 1),
    "device": ({"device": "auto"}, lambda s: s.info.config["device"], 1),
    # two processes compute the statistics of one (tests/unit/test_distributed.py): what differs is where it ran
    "processes": ({"processes": 2}, lambda s: s.info.device, None),
    "hidden_sizes": ({"hidden_sizes": [8, 8]}, lambda s: s.info.n_parameters, 1),
    "dropout": ({"dropout": 0.5}, first("loss"), 1),
    "activation": ({"activation": "tanh"}, first("logit_max"), 1),
    "eval_interval": ({"eval_interval": 2}, lambda s: len(s.evals), None),
    "stats_interval": ({"stats_interval": 2}, n_steps, None),
    "flush_batches": ({"flush_batches": 1}, lambda s: len(s.chunks), None),
    "flush_seconds": ({"flush_seconds": 0.0}, lambda s: len(s.chunks), None),
    "data.kind": ({}, None, None),  # table data: see test_table_data_reaches_the_step
    "data.path": ({}, None, None),
    "data.label_column": ({}, None, None),
    "data.n_samples": ({"data": {"n_samples": 96}}, n_steps, None),
    "data.n_features": ({"data": {"n_features": 9}}, lambda s: s.info.n_parameters, 1),
    "data.num_classes": ({"data": {"num_classes": 5}, "min_entropy": 1.5}, lambda s: s.info.num_classes, 1),
    "data.imbalance": ({"data": {"imbalance": 1.0}}, lambda s: s.info.profile.target_class_share, 1),
    "data.cluster_std": ({"data": {"cluster_std": 3.0}}, first("target_entropy_mean"), 1),
    "data.class_separation": ({"data": {"class_separation": 6.0}}, first("target_entropy_mean"), 1),
    "data.n_annotators": ({"data": {"n_annotators": 7}}, lambda s: s.info.profile.target_entropy_mean, 1),
    "data.biased_annotator_rate": (
        {"data": {"biased_annotator_rate": 0.9}},
        lambda s: s.info.profile.target_mass_share,
        1,
    ),
    "data.seed": ({"data": {"seed": 3}}, first("target_entropy_mean"), 1),
    "data.val_fraction": ({"data": {"val_fraction": 0.5}}, lambda s: s.info.profile.n_val, 1),
}


def test_every_field_has_a_probe():
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}
    names |= {f"data.{f.name}" for f in dataclasses.fields(DataSpec)}
    assert names == set(PROBES)


@pytest.mark.parametrize("field", [f for f, (o, probe, _) in PROBES.items() if probe is not None])
def test_changing_the_field_changes_the_step(field):
    override, probe, steps = PROBES[field]
    base_value, changed_value = probe(run({}, steps)), probe(run(override, steps))
    if field == "device":  # "auto" resolves to this machine's device; both are recorded as asked
        assert (base_value, changed_value) == ("cpu", "auto")
        return
    assert not np.array_equal(np.asarray(base_value, dtype=object), np.asarray(changed_value, dtype=object)), (
        f"{field}: {base_value} == {changed_value}"
    )


def test_table_data_reaches_the_step(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    rows = ["f0,f1,label"] + [f"{a:.3f},{b:.3f},{int(a > 0) + 2 * int(b > 0)}" for a, b in rng.normal(size=(80, 2))]
    path.write_text("\n".join(rows) + "\n")
    table = {"kind": "table", "path": str(path), "label_column": "label", "num_classes": 4}
    sink = run({"min_entropy": 1.0}, steps=1, data=table)
    assert sink.info.profile.n_features == 2 and sink.info.num_classes == 4
    assert sink.info.profile.target_onehot_frac == 1.0, "hard labels become one-hot targets"
