"""The training loop: what reaches the sink, cancel, divergence, failure and the file sink."""

import json
import math

import numpy as np
import pytest
import torch

from trainer import JsonlSink, ListSink, from_dict, train
from trainer import loop as loop_module
from trainer.records import BATCH_COLUMNS, EVAL_METRICS

TINY = {
    "hidden_sizes": [16],
    "batch_size": 32,
    "epochs": 2,
    "device": "cpu",
    "lr": 0.01,
    "data": {"n_samples": 160, "n_features": 6},
}


def test_every_batch_reaches_the_sink_in_order_with_evaluations():
    sink = ListSink()
    result = train(from_dict(TINY), sink)
    assert result.status == "completed" and result.steps == 8 and result.epochs == 2
    assert list(sink.steps) == list(range(8))
    assert sink.chunks[0].values.shape[1] == len(BATCH_COLUMNS)
    assert np.allclose(sink.class_hist().sum(axis=1), 1.0)
    assert np.isfinite(np.concatenate([c.values for c in sink.chunks])).all()
    assert [e.epoch for e in sink.evals] == [0, 1] and set(sink.evals[0].metrics) == set(EVAL_METRICS)
    assert result.final_eval is sink.evals[-1] and sink.result is result


def test_should_stop_cancels_and_keeps_what_was_measured():
    calls = iter(range(-loop_module.PREPARATION_CHECKS, 100))  # counted from the first step
    sink = ListSink()
    result = train(from_dict(TINY), sink, should_stop=lambda: next(calls) >= 3)
    assert result.status == "cancelled" and result.steps == 3
    assert list(sink.steps) == [0, 1, 2]


def test_nonfinite_loss_ends_the_run_as_diverged(monkeypatch):
    class Exploding(loop_module.MLP):
        calls = 0

        def forward(self, x):
            Exploding.calls += 1
            out = super().forward(x)
            return out * float("nan") if Exploding.calls > 3 else out

    monkeypatch.setattr(loop_module, "MLP", Exploding)
    sink = ListSink()
    result = train(from_dict({**TINY, "epochs": 5, "flush_batches": 1}), sink)
    assert result.status == "diverged"
    nonfinite = [w for w in result.warnings if w.kind == "nonfinite_loss"]
    assert len(nonfinite) == 1 and nonfinite[0].severity == "critical" and nonfinite[0].step == 3
    assert nonfinite[0].advice is not None and nonfinite[0].advice.overrides
    loss = sink.column("loss")
    assert np.isfinite(loss[:3]).all() and math.isnan(loss[3]), "stats up to and including the NaN are kept"
    assert result.steps < 5 * 4


def test_an_exception_fails_the_run_without_escaping(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(loop_module, "evaluate_predictions", broken)
    sink = ListSink()
    result = train(from_dict(TINY), sink)
    assert result.status == "failed" and "out of memory (simulated)" in result.error
    assert len(sink.steps) == 4, "the first epoch's statistics reached the sink"
    assert sink.result is result


def test_missing_table_fails_with_a_clear_error(tmp_path):
    cfg = from_dict({**TINY, "data": {"kind": "table", "path": str(tmp_path / "nope.csv")}})
    result = train(cfg)
    assert result.status == "failed" and "nope.csv" in result.error


def test_same_seed_same_run():
    a, b = ListSink(), ListSink()
    train(from_dict(TINY), a)
    train(from_dict(TINY), b)
    assert np.array_equal(a.column("loss"), b.column("loss"))


def test_jsonl_sink_writes_every_event(tmp_path):
    path = tmp_path / "run.jsonl"
    train(from_dict(TINY), JsonlSink(path))
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("batch") == 8 and kinds.count("eval") == 2
    assert events[0]["config"]["lr"] == 0.01 and events[-1]["status"] == "completed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_request_without_cuda_fails_clearly():
    result = train(from_dict({**TINY, "device": "cuda"}))
    assert result.status == "failed" and "CUDA is not available" in result.error
