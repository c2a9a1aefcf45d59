"""Per-batch statistics against direct numpy computations, and the chunked read-back."""

import math

import numpy as np
import pytest
import torch

from trainer.losses import objective
from trainer.monitor import DEVICE_COLUMNS, StatsRecorder, batch_stats
from trainer.records import BATCH_COLUMNS


def _parts(logits, targets, temperature=2.0, smoothing=0.1):
    return objective(
        logits,
        targets,
        torch.ones(4, 3),
        label_smoothing=smoothing,
        temperature=temperature,
        entropy_weight=1.0,
        min_entropy=1.0,
        entropy_penalty_kind="linear",
        cap_entropy_at_target=False,
        class_weights=None,
        final_layer_weight_decay=0.1,
    )


def _row(logits, targets, grad_norm=2.0, max_norm=1.0):
    parts = _parts(logits, targets)
    row = batch_stats(logits, targets, parts, torch.tensor(grad_norm), max_norm, torch.ones(4, 3))
    return dict(zip(DEVICE_COLUMNS, row[: len(DEVICE_COLUMNS)].tolist(), strict=True)), row[len(DEVICE_COLUMNS) :]


def test_statistics_match_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(20, 4) * 5
    logits[3] = torch.tensor([60.0, 0.0, 0.0, 0.0])  # one near-one-hot prediction even at T=2
    targets = torch.softmax(torch.randn(20, 4) * 3, -1)
    targets[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    stats, hist = _row(logits, targets)

    z = logits.numpy().astype(np.float64)
    p = np.exp(z / 2.0 - z.max(1, keepdims=True) / 2.0)
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    t = 0.9 * targets.numpy() + 0.1 / 4
    top2 = np.sort(z, 1)[:, -2:]
    pred = p.argmax(1)
    shares = np.bincount(pred, minlength=4) / 20
    nz = shares[shares > 0]
    expected = {
        "logit_max": z.max(),
        "logit_min": z.min(),
        "logit_range": z.max() - z.min(),
        "logit_mean": z.mean(),
        "logit_std": z.std(),
        "logit_margin": (top2[:, 1] - top2[:, 0]).mean(),
        "entropy_mean": h.mean(),
        "entropy_min": h.min(),
        "entropy_p10": np.sort(h)[math.ceil(0.1 * 20) - 1],
        "target_entropy_mean": (-(t * np.log(t)).sum(1)).mean(),
        "maxprob_mean": p.max(1).mean(),
        "onehot_frac": (p.max(1) > 0.99).mean(),
        "target_onehot_frac": (targets.numpy().max(1) > 0.99).mean(),
        "hist_top_share": shares.max(),
        "hist_eff_classes": math.exp(-(nz * np.log(nz)).sum()),
        "output_diversity": p.std(0).mean(),
        "target_diversity": t.std(0).mean(),
        "grad_norm": 2.0,
        "clipped": 1.0,
        "head_weight_norm": math.sqrt(12),
        "loss_final_l2": 0.1 * 12,
    }
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert stats["onehot_frac"] > 0 and stats["target_onehot_frac"] > 0, "the planted one-hot rows count"
    assert np.allclose(hist.numpy(), shares)


def test_not_clipped_below_the_threshold_and_never_without_clipping():
    logits, targets = torch.randn(8, 4), torch.softmax(torch.randn(8, 4), -1)
    assert _row(logits, targets, grad_norm=0.5, max_norm=1.0)[0]["clipped"] == 0.0
    assert _row(logits, targets, grad_norm=50.0, max_norm=None)[0]["clipped"] == 0.0


def test_nan_logits_come_through_as_nan():
    logits = torch.randn(8, 4)
    logits[2, 1] = float("nan")
    stats, _ = _row(logits, torch.softmax(torch.randn(8, 4), -1))
    assert math.isnan(stats["loss"]) and math.isnan(stats["logit_mean"])


def test_recorder_returns_chunks_in_order_with_host_columns():
    rec = StatsRecorder(num_classes=3, device=torch.device("cpu"), capacity=4)
    width = len(DEVICE_COLUMNS) + 3
    for step in range(6):
        rec.record(torch.full((width,), float(step)), step, epoch=step // 3, lr=0.1 * step, batch_size=10)
        if rec.full:
            rec.flush()
    rec.flush()
    chunks = rec.ready()
    assert [list(c.steps) for c in chunks] == [[0, 1, 2, 3], [4, 5]]
    assert list(chunks[0].epochs) == [0, 0, 0, 1]
    assert chunks[1].values.shape == (2, len(BATCH_COLUMNS))
    assert np.allclose(chunks[1].column("lr"), [0.4, 0.5])
    assert np.allclose(chunks[1].column("entropy_mean"), [4.0, 5.0])
    assert np.all(chunks[0].column("samples_per_s") > 0)
    assert chunks[1].class_hist.shape == (2, 3)
    assert rec.ready() == []
