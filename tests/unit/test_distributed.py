"""One run on several processes (gloo on the CPU): the same statistics as one process, a cancel that reaches
every rank, a rank that dies or fails ending the run with its reason, and the configs that cannot run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from factories import pid_alive

from trainer import BATCH_COLUMNS, ConfigError, ListSink, from_dict, train
from trainer.config import processes_problem
from trainer.data import load_data
from trainer.distributed import Shard
from trainer.launcher import launch

# the fixed preset's regularizers (balanced class weights, smoothing, T = 4, deployed at T = 1, clipping),
# 201 samples: 161 to train, so each epoch's last batch holds 1 row and leaves rank 1 with none
BASE = {
    "epochs": 3,
    "batch_size": 32,
    "hidden_sizes": [32, 32],
    "device": "cpu",
    "lr": 0.05,
    "eval_interval": 7,
    "data": {"n_samples": 201, "imbalance": 4.0},
}
# float32 on both sides, summed in another order: each rank reduces its half of the batch and gloo adds the
# halves' gradients. Per step that differs by ~1e-7 relative; through the weights it grows with the steps
# (18 steps here: at most 5e-6 measured, 1e-4 after 60). A rank's wrong share of the loss or gradient is
# off by 1e-3 or more from the first step on.
RTOL, ATOL = 1e-4, 1e-5
LONG = {**BASE, "epochs": 10_000, "eval_interval": 0, "data": {"n_samples": 256}}


def _values(sink: ListSink) -> np.ndarray:
    keep = [i for i, name in enumerate(BATCH_COLUMNS) if name != "samples_per_s"]  # a wall-clock rate
    return np.concatenate([c.values[:, keep] for c in sink.chunks])


@pytest.mark.slow
def test_two_processes_give_one_process_statistics_evaluations_steps_and_epochs() -> None:
    assert len(load_data(from_dict(BASE).data).x_train) % 32 == 1, "the last batch must leave a rank empty"
    one, two = ListSink(), ListSink()
    r1 = train(from_dict(BASE), one)
    r2 = train(from_dict({**BASE, "processes": 2}), two)
    assert (r1.status, r2.status) == ("completed", "completed"), r2.error
    assert (r2.steps, r2.epochs) == (r1.steps, r1.epochs) == (18, 3)
    assert list(two.steps) == list(one.steps) == list(range(18))
    np.testing.assert_allclose(_values(two), _values(one), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(two.class_hist(), one.class_hist(), rtol=0, atol=1e-12)
    assert [e.step for e in two.evals] == [e.step for e in one.evals] == [7, 14, 18]
    for e1, e2 in zip(one.evals, two.evals, strict=True):
        assert e2.metrics == pytest.approx(e1.metrics, rel=RTOL, abs=ATOL)
        assert e2.pred_hist == e1.pred_hist and e2.confusion == e1.confusion
    assert two.info is not None and two.info.device == "cpu, 2 processes (gloo)"
    assert two.result is not None and two.result.status == "completed", "the sink hears the end once, here"


@pytest.mark.slow
def test_a_cancel_reaches_every_rank_and_they_stop_at_the_same_step() -> None:
    sink, pids = ListSink(), []
    asked: list[float] = []

    def should_stop() -> bool:
        if sink.chunks and not asked:
            asked.append(time.monotonic())
        return bool(asked)

    result = launch(from_dict({**LONG, "processes": 2}), sink, should_stop, on_spawned=pids.extend)
    assert result.status == "cancelled", result.error
    assert time.monotonic() - asked[0] < 5, "every rank stopped within a sync point or two"
    # a rank that had not stopped would hold the others in the last chunk's gather: the run would fail or hang
    assert result.error is None and sink.result is result
    assert list(sink.steps) == list(range(len(sink.steps))) and 0 < len(sink.steps) <= result.steps
    assert len(pids) == 2 and not any(pid_alive(pid) for pid in pids)


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_run_naming_it_and_no_rank_is_left() -> None:
    pids: list[int] = []
    killed: list[float] = []

    class KillOnFirstChunk(ListSink):
        def on_batches(self, chunk) -> None:  # type: ignore[no-untyped-def]
            super().on_batches(chunk)
            if not killed:
                os.kill(pids[1], signal.SIGKILL)
                killed.append(time.monotonic())

    sink = KillOnFirstChunk()
    result = launch(from_dict({**LONG, "processes": 2}), sink, lambda: False, on_spawned=pids.extend)
    assert result.status == "failed" and result.error == "rank 1 died (signal 9, SIGKILL)"
    assert time.monotonic() - killed[0] < 5
    assert sink.result is result and result.steps >= len(sink.steps) > 0, "what was measured is kept"
    assert not any(pid_alive(pid) for pid in pids), "the other rank was killed and every rank reaped"


@pytest.mark.slow
def test_a_nonfinite_loss_stops_every_rank_as_diverged_where_one_process_sees_it() -> None:
    # SGD at lr 10 on logits divided by T = 0.05, unclipped: the loss is NaN within 20 steps
    diverging = {**LONG, "optimizer": "sgd", "lr": 10.0, "max_grad_norm": None, "temperature": 0.05, "epochs": 200}
    one, two, pids = ListSink(), ListSink(), []
    r1 = train(from_dict(diverging), one)
    r2 = launch(from_dict({**diverging, "processes": 2}), two, lambda: False, on_spawned=pids.extend)
    assert (r1.status, r2.status) == ("diverged", "diverged"), r2.error
    first = [[w.step for w in r.warnings if w.kind == "nonfinite_loss"] for r in (r1, r2)]
    assert first[0] == first[1] and len(first[0]) == 1, "the detector sees the global batch's loss"
    # rank 0 learns of it when the chunk's statistics land, and every rank stops at the next sync point
    assert first[1][0] < r2.steps <= first[1][0] + 1 + 2 * 50 and not any(pid_alive(pid) for pid in pids)


def test_a_failure_inside_the_ranks_fails_the_run_with_its_exception(tmp_path) -> None:
    missing = str(tmp_path / "gone.csv")
    cfg = from_dict({**BASE, "processes": 2, "data": {"kind": "table", "path": missing, "label_column": "y"}})
    sink = ListSink()
    started = time.monotonic()
    result = train(cfg, sink)
    assert result.status == "failed" and result.error is not None
    assert result.error.startswith(("rank 0 failed: ", "rank 1 failed: ")) and "gone.csv" in result.error
    assert time.monotonic() - started < 30 and sink.result is result and sink.info is None


def test_one_process_never_starts_torch_distributed() -> None:
    code = (
        "import sys, torch.distributed as dist; from trainer import train\n"
        "r = train({'epochs': 1, 'batch_size': 16, 'hidden_sizes': [8], 'device': 'cpu', 'data': {'n_samples': 64}})\n"
        "print(r.status, dist.is_initialized(), sorted(m for m in sys.modules if m in "
        "('trainer.launcher', 'trainer.ranks', 'trainer.distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "completed False []"


@pytest.mark.parametrize(
    "overrides,field,says",
    [
        ({"processes": 3, "batch_size": 64}, "batch_size", "must be divisible by processes (3)"),
        ({"processes": 0}, "processes", "must be in [1, 64], got 0"),
        ({"processes": 65}, "processes", "must be in [1, 64], got 65"),
        ({"processes": 2.5}, "processes", "must be an integer"),
        ({"processes": 2, "device": "cuda:1"}, "device", 'name "cuda"'),
    ],
)
def test_a_config_that_cannot_run_on_its_processes_names_the_field(overrides: dict, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(overrides)
    assert [f for f, _ in err.value.errors] == [field] and says in err.value.errors[0][1]


def test_processes_need_one_cuda_device_each_but_any_number_fit_the_cpu() -> None:
    assert processes_problem(4, "cpu", cuda_devices=0) is None
    assert processes_problem(4, "auto", cuda_devices=0) is None  # auto without CUDA trains on the CPU
    assert processes_problem(2, "cuda", cuda_devices=2) is None
    assert processes_problem(1, "cuda", cuda_devices=1) is None
    for device in ("cuda", "auto"):
        problem = processes_problem(4, device, cuda_devices=2)
        assert problem is not None and "need 4 CUDA devices" in problem and "has 2" in problem


def test_a_run_that_needs_more_gpus_than_the_machine_has_fails_without_starting_a_rank() -> None:
    if torch.cuda.device_count() >= 64:
        pytest.skip("this machine has 64 CUDA devices")
    sink = ListSink()
    result = train(from_dict({**BASE, "processes": 64, "batch_size": 64, "device": "cuda"}), sink)
    assert result.status == "failed" and "need 64 CUDA devices" in (result.error or "") and sink.info is None


@pytest.mark.parametrize("batch,world", [(64, 2), (1, 2), (33, 4), (5, 8)])
def test_the_ranks_slices_in_rank_order_are_the_batch(batch: int, world: int) -> None:
    idx = torch.randperm(1000)[:batch]
    slices = [Shard(r, world, torch.device("cpu")).rows(idx) for r in range(world)]
    assert torch.equal(torch.cat(slices), idx)
    assert max(len(s) for s in slices) - min(len(s) for s in slices) <= 1
