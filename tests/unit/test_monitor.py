"""Per-batch statistics against direct numpy computations, and the chunked read-back."""

import math

import numpy as np
import pytest
import torch

from trainer.monitor import STEP_COLUMNS, StatsRecorder, chunk_stats
from trainer.records import BATCH_COLUMNS


def _reference(z: np.ndarray, raw_t: np.ndarray, temperature: float, eps: float) -> dict[str, float]:
    """Every derived statistic of one batch, computed directly with numpy."""
    b, c = z.shape
    e = np.exp(z / temperature - (z / temperature).max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    t = (1 - eps) * raw_t + eps / c
    top2 = np.sort(z, 1)[:, -2:]
    shares = np.bincount(p.argmax(1), minlength=c) / b
    nz = shares[shares > 0]
    return {
        "logit_max": z.max(),
        "logit_min": z.min(),
        "logit_range": z.max() - z.min(),
        "logit_mean": z.mean(),
        "logit_std": z.std(),
        "logit_margin": (top2[:, 1] - top2[:, 0]).mean(),
        "entropy_mean": h.mean(),
        "entropy_min": h.min(),
        "entropy_p10": np.sort(h)[math.ceil(0.1 * b) - 1],
        "target_entropy_mean": (-(t * np.log(t)).sum(1)).mean(),
        "maxprob_mean": p.max(1).mean(),
        "onehot_frac": (p.max(1) > 0.99).mean(),
        "target_onehot_frac": (raw_t.max(1) > 0.99).mean(),
        "hist_top_share": shares.max(),
        "hist_eff_classes": math.exp(-(nz * np.log(nz)).sum()),
        "output_diversity": p.std(0).mean(),
        "target_diversity": t.std(0).mean(),
        "_hist": shares,
    }


def test_chunk_statistics_match_direct_computation_batch_by_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 4) * 5
    logits[1, 3] = torch.tensor([60.0, 0.0, 0.0, 0.0])  # a near-one-hot prediction even at T=2
    targets = torch.softmax(torch.randn(3, 20, 4) * 3, -1)
    targets[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    step_values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5, 7.0], [1.0, 2.0, 3.0, 4.0, 2.5, 7.0], [0.0] * 6])
    stats, hist = chunk_stats(logits, targets, step_values, temperature=2.0, label_smoothing=0.1, max_grad_norm=1.0)
    for i in range(3):
        expected = _reference(logits[i].double().numpy(), targets[i].double().numpy(), 2.0, 0.1)
        assert np.allclose(hist[i].numpy(), expected.pop("_hist"))
        for name, value in expected.items():
            assert stats[name][i].item() == pytest.approx(value, rel=1e-6, abs=1e-9), (i, name)
    assert stats["onehot_frac"][1] > 0 and stats["target_onehot_frac"][0] > 0, "the planted one-hot rows count"
    assert stats["clipped"].tolist() == [0.0, 1.0, 0.0]
    for j, name in enumerate(STEP_COLUMNS):
        assert stats[name].tolist() == step_values[:, j].double().tolist()
    assert set(stats) == set(BATCH_COLUMNS) - {"lr", "samples_per_s"}


def test_never_clipped_without_clipping():
    stats, _ = chunk_stats(
        torch.randn(1, 8, 4),
        torch.softmax(torch.randn(1, 8, 4), -1),
        torch.full((1, 6), 50.0),
        temperature=1.0,
        label_smoothing=0.0,
        max_grad_norm=None,
    )
    assert stats["clipped"].item() == 0.0


def test_nan_logits_come_through_as_nan():
    logits = torch.randn(1, 8, 4)
    logits[0, 2, 1] = float("nan")
    values = torch.tensor([[float("nan"), 0, 0, 0, 1, 1]])
    stats, _ = chunk_stats(
        logits,
        torch.softmax(torch.randn(1, 8, 4), -1),
        values,
        temperature=1.0,
        label_smoothing=0.0,
        max_grad_norm=None,
    )
    assert math.isnan(stats["loss"].item()) and math.isnan(stats["logit_mean"].item())


def test_recorder_returns_chunks_in_order_and_splits_on_a_new_batch_size():
    rec = StatsRecorder(num_classes=3, device=torch.device("cpu"), capacity=4)
    sizes = [5, 5, 5, 5, 5, 2]  # the last batch of an epoch is smaller
    for step, b in enumerate(sizes):
        logits = torch.full((b, 3), float(step)) + torch.arange(3.0)
        rec.record(logits, torch.full((b, 3), 1 / 3), torch.full((6,), float(step)), step, step // 3, 0.1 * step)
        if rec.full:
            rec.flush()
    rec.flush()
    chunks = rec.ready()
    assert [list(c.steps) for c in chunks] == [[0, 1, 2, 3], [4], [5]]
    assert list(chunks[0].epochs) == [0, 0, 0, 1]
    assert chunks[0].values.shape == (4, len(BATCH_COLUMNS)) and chunks[0].class_hist.shape == (4, 3)
    assert np.allclose(chunks[0].column("lr"), [0.0, 0.1, 0.2, 0.3])
    assert np.allclose(chunks[0].column("logit_max"), [2.0, 3.0, 4.0, 5.0])
    assert np.allclose(chunks[2].column("loss"), [5.0])
    assert np.all(chunks[0].column("samples_per_s") > 0)
    assert rec.ready() == []
