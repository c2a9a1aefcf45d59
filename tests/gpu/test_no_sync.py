"""On CUDA, the batch loop runs with no host sync: statistics come back in asynchronous chunks."""

import pytest
import torch

from trainer import ListSink, from_dict, train
from trainer import loop as loop_module

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_batch_loop_makes_no_host_sync(monkeypatch):
    # Sync debug mode "error" raises on any synchronizing call. It is on for the whole batch loop
    # (steps, statistics, flushes, read-back polling) and off only inside evaluation, which is a
    # documented once-per-epoch sync point.
    run_loop, evaluate = loop_module._loop, loop_module._Run.evaluate

    def strict_loop(run, should_stop):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return run_loop(run, should_stop)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def relaxed_evaluate(self, epoch):
        torch.cuda.set_sync_debug_mode("default")
        try:
            evaluate(self, epoch)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(loop_module, "_loop", strict_loop)
    monkeypatch.setattr(loop_module._Run, "evaluate", relaxed_evaluate)
    cfg = from_dict({"device": "cuda", "epochs": 2, "data": {"n_samples": 4096}, "batch_size": 256})
    sink = ListSink()
    result = train(cfg, sink)
    assert result.status == "completed", result.error
    assert len(sink.steps) == result.steps == 2 * 13
    assert len(sink.evals) == 2
