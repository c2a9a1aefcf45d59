"""Per-batch statistics against direct numpy computations, and the chunked read-back."""

import math

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig
from trainer.losses import objective_from_config
from trainer.monitor import DEVICE_COLUMNS, STEP_COLUMNS, StatsRecorder, stats_from_logits
from trainer.records import BATCH_COLUMNS


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _reference(z: np.ndarray, raw_t: np.ndarray, temperature: float, eps: float, deploy: float = 1.0) -> dict:
    """Every derived statistic of one batch, computed directly with numpy."""
    b, c = z.shape
    p, pd = _softmax(z / temperature), _softmax(z / deploy)
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
        "logit_spread_max": np.abs(z - z.mean(1, keepdims=True)).max(),
        "entropy_mean": h.mean(),
        "entropy_min": h.min(),
        "entropy_p10": np.sort(h)[math.ceil(0.1 * b) - 1],
        "target_entropy_mean": (-(t * np.log(t)).sum(1)).mean(),
        "maxprob_mean": p.max(1).mean(),
        "onehot_frac": (p.max(1) > 0.99).mean(),
        "target_onehot_frac": (t.max(1) > 0.99).mean(),
        "deploy_entropy_mean": (-(pd * np.log(np.maximum(pd, 1e-300))).sum(1)).mean(),
        "deploy_maxprob_mean": pd.max(1).mean(),
        "deploy_onehot_frac": (pd.max(1) > 0.99).mean(),
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
    stats, hist = stats_from_logits(
        logits, targets, step_values, temperature=2.0, label_smoothing=0.1, max_grad_norm=1.0
    )
    for i in range(3):
        expected = _reference(logits[i].double().numpy(), targets[i].double().numpy(), 2.0, 0.1)
        assert np.allclose(hist[i].numpy(), expected.pop("_hist"))
        for name, value in expected.items():
            # float32, as the loss computed them
            assert stats[name][i].item() == pytest.approx(value, rel=2e-6, abs=1e-6), (i, name)
    assert stats["onehot_frac"][1] > 0 and stats["deploy_onehot_frac"][1] > 0, "the planted one-hot rows count"
    assert stats["target_onehot_frac"][0] == 0, "smoothed by 0.1, a one-hot target is no longer one-hot"
    assert stats["clipped"].tolist() == [0.0, 1.0, 0.0]
    for j, name in enumerate(STEP_COLUMNS):
        assert stats[name].tolist() == pytest.approx(step_values[:, j].tolist(), rel=1e-6)
    assert set(stats) == set(BATCH_COLUMNS) - {"lr", "samples_per_s"}


def test_never_clipped_without_clipping():
    stats, _ = stats_from_logits(
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
    stats, _ = stats_from_logits(
        logits,
        torch.softmax(torch.randn(1, 8, 4), -1),
        values,
        temperature=1.0,
        label_smoothing=0.0,
        max_grad_norm=None,
    )
    assert math.isnan(stats["loss"].item()) and math.isnan(stats["logit_mean"].item())


def _step(logits: torch.Tensor, targets: torch.Tensor, head: torch.Tensor, **overrides):
    """What the training step's objective returns, with the default config plus `overrides`."""
    return objective_from_config(logits, targets, head, TrainConfig(class_weights=None).replace(**overrides), None)


def test_recorder_returns_chunks_in_order_and_splits_on_a_new_batch_size():
    rec = StatsRecorder(num_classes=3, device=torch.device("cpu"), capacity=4)
    head = torch.ones(3, 2)
    sizes = [5, 5, 5, 5, 5, 2]  # the last batch of an epoch is smaller
    for step, b in enumerate(sizes):
        logits = torch.full((b, 3), float(step)) + torch.arange(3.0)
        parts = _step(logits, torch.full((b, 3), 1 / 3), head)
        rec.record(logits, parts, torch.tensor(float(step)), step, step // 3, 0.1 * step)
        if rec.full:
            rec.flush()
    rec.flush()
    chunks = rec.ready(wait=True)
    assert [list(c.steps) for c in chunks] == [[0, 1, 2, 3], [4], [5]]
    assert list(chunks[0].epochs) == [0, 0, 0, 1]
    assert chunks[0].values.shape == (4, len(BATCH_COLUMNS)) and chunks[0].class_hist.shape == (4, 3)
    assert np.allclose(chunks[0].column("lr"), [0.0, 0.1, 0.2, 0.3])
    assert np.allclose(chunks[0].column("logit_max"), [2.0, 3.0, 4.0, 5.0])
    assert np.allclose(chunks[0].column("grad_norm"), [0.0, 1.0, 2.0, 3.0])
    assert np.allclose(chunks[2].column("head_weight_norm"), [math.sqrt(6.0)])
    assert np.all(chunks[0].column("samples_per_s") > 0)
    assert rec.ready() == []


def test_recorder_reuses_the_loss_tensors_and_matches_a_recomputation():
    """What the recorder derives from the loss's own tensors equals the statistics recomputed from
    logits and raw targets, for every column (smoothing, temperature and clipping included)."""
    torch.manual_seed(1)
    n, b, c = 6, 16, 5
    logits = torch.randn(n, b, c) * 4
    logits[2, 0] = torch.tensor([90.0, 0, 0, 0, 0])
    raw = torch.softmax(torch.randn(n, b, c) * 3, -1)
    raw[3, :4] = torch.eye(c)[0]
    heads = torch.randn(n, c, 7)
    grad_norms = torch.tensor([0.5, 3.0, 0.1, 2.0, 0.9, 1.1])
    rec = StatsRecorder(c, torch.device("cpu"), capacity=n, max_grad_norm=1.0, temperature=2.0, deploy_temperature=1.0)
    expected_values = []
    for i in range(n):
        parts = _step(logits[i], raw[i], heads[i], label_smoothing=0.2, temperature=2.0, final_layer_weight_decay=0.3)
        rec.record(logits[i], parts, grad_norms[i], i, 0, 0.01)
        expected_values.append(
            [
                parts.total,
                parts.ce,
                parts.entropy_term,
                parts.final_l2,
                grad_norms[i],
                torch.linalg.vector_norm(heads[i]),
            ]
        )
    rec.flush()
    (chunk,) = rec.ready(wait=True)
    stats, hist = stats_from_logits(
        logits, raw, torch.tensor(expected_values), temperature=2.0, label_smoothing=0.2, max_grad_norm=1.0
    )
    for name in DEVICE_COLUMNS:
        assert chunk.column(name) == pytest.approx(stats[name].tolist(), rel=1e-5, abs=1e-6), name
    assert np.allclose(chunk.class_hist, hist.numpy())
    assert chunk.column("target_onehot_frac")[3] == 0, "the loss's targets (smoothed by 0.2) are not one-hot"
    assert chunk.column("deploy_entropy_mean").mean() < chunk.column("entropy_mean").mean(), "T=1 is sharper than T=2"
    assert chunk.column("clipped").tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_recording_a_step_dispatches_no_tensor_op():
    """record() keeps references only: not one kernel per batch (the statistics come per chunk)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    rec = StatsRecorder(4, torch.device("cpu"), capacity=100)
    logits = [torch.randn(8, 4) for _ in range(5)]
    parts = [_step(z, torch.softmax(torch.randn(8, 4), -1), torch.randn(4, 3)) for z in logits]
    grad_norm = torch.tensor(1.0)
    with Count() as count:
        for step, (z, p) in enumerate(zip(logits, parts, strict=True)):
            rec.record(z, p, grad_norm, step, 0, 0.1)
        assert count.ops == [], count.ops
        rec.flush()
    assert count.ops, "the chunk's statistics are computed at flush"
    (chunk,) = rec.ready(wait=True)
    assert list(chunk.steps) == [0, 1, 2, 3, 4] and np.isfinite(chunk.column("entropy_mean")).all()
