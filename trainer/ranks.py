"""A rank's life in a run on several processes (started by trainer/launcher.py): `rank_main` is the process's
entry point and `train_rank` is `train()` for one rank. The ranks meet at chunk boundaries only (a gather of
the chunk's tensors, then one all-reduce of rank 0's verdict), besides DDP's gradient all-reduce every step.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.config import TrainConfig, from_dict
from trainer.data import SoftLabelData, load_data
from trainer.distributed import Pace, Shard, ShardRecorder, agree, ce_share, init_group, loss_share, wrap
from trainer.loop import LossShare, _Run, _run_info, resolve_device
from trainer.memory_limit import describe_out_of_memory
from trainer.records import BatchChunk, CollapseWarning, EvalRecord, RunInfo, TrainResult
from trainer.sinks import NullSink, Sink


class PipeSink(NullSink):
    """Rank 0's sink: every record goes to the launcher, which hands it to the run's own sink."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def on_start(self, info: RunInfo) -> None:
        self.conn.send(("start", info))

    def on_batches(self, chunk: BatchChunk) -> None:
        self.conn.send(("batches", chunk))

    def on_eval(self, record: EvalRecord) -> None:
        self.conn.send(("eval", record))

    def on_warning(self, warning: CollapseWarning) -> None:
        self.conn.send(("warning", warning))

    def on_end(self, result: TrainResult) -> None:
        self.conn.send(("end", result))


class _RankRun(_Run):
    """One rank's run: DDP around the model, its slice of every batch, a recorder that gathers to rank 0.
    Rank 0 alone evaluates, runs the detector and writes to the sink."""

    recorder: ShardRecorder

    def __init__(self, cfg: TrainConfig, data: SoftLabelData, sink: Sink, shard: Shard) -> None:
        self.shard = shard
        super().__init__(cfg, data, sink, shard.device)
        self.net = wrap(self.model, shard)

    def make_recorder(self, num_classes: int) -> ShardRecorder:
        cfg = self.cfg
        return ShardRecorder(
            num_classes,
            self.device,
            cfg.flush_batches,
            shard=self.shard,
            max_grad_norm=cfg.max_grad_norm,
            temperature=cfg.temperature,
            deploy_temperature=cfg.deploy_temperature,
        )

    def split(self, idx: torch.Tensor) -> tuple[torch.Tensor, LossShare | None]:
        rows = self.shard.rows(idx)
        self.recorder.batch = len(idx)  # a chunk ends where the global batch's size changes, on every rank alike
        weight = ce_share(self.t[rows], self.t[idx], self.cfg.label_smoothing, self.class_weights)
        return rows, partial(loss_share, local=len(rows), batch=len(idx), world=self.shard.world, ce_weight=weight)

    def devices(self) -> str:
        return self.shard.describe()


def train_rank(cfg: TrainConfig, shard: Shard, sink: Sink, should_stop: Callable[[], bool]) -> TrainResult:
    """`train()` on one rank: every rank loads the data and builds the model (DDP then starts from rank 0's
    weights); rank 0's `should_stop` and divergence reach the others at the next sync point. Raises on a
    failure: the launcher ends the run and the other ranks."""
    started = time.perf_counter()
    data = load_data(cfg.data)
    run = _RankRun(cfg, data, sink, shard)
    verdict, _ = agree(shard, cancel=should_stop(), diverged=False, next_steps=0)  # a cancel while preparing
    status, epoch = verdict or "completed", 0
    try:
        if verdict is None:
            sink.on_start(_run_info(cfg, run, data))
            status, epoch = _rank_loop(run, should_stop)
        run.recorder.flush()  # the last chunk's gather: every rank, at the same step
    except BaseException:
        with contextlib.suppress(Exception):  # what rank 0 has gathered still reaches the sink
            run.deliver(run.recorder.ready(wait=True))
        raise
    run.deliver(run.recorder.ready(wait=True))
    if run.diverged_at is not None and status in ("completed", "cancelled"):
        status = "diverged"
    result = TrainResult(
        status=status,
        config=cfg.to_dict(),
        steps=run.step,
        epochs=epoch,
        duration_s=time.perf_counter() - started,
        final_eval=run.last_eval,
        warnings=run.warnings,
    )
    sink.on_end(result)
    return result


def _rank_loop(run: _RankRun, should_stop: Callable[[], bool]) -> tuple[str, int]:
    """`loop._loop` on a rank: the same global batches in the same order (one permutation, the same seed on
    every rank); flushes and stop decisions at sync points only, which rank 0 paces."""
    cfg, shard = run.cfg, run.shard
    lead = shard.rank == 0
    pace = Pace(cfg.flush_seconds, cfg.flush_batches, cfg.stats_interval)
    next_sync = pace.first
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(run.x), generator=run.shuffle)
        if run.device.type == "cuda":  # pinned + non_blocking: a pageable copy would sync the host
            order = order.pin_memory().to(run.device, non_blocking=True)
        for idx in order.split(cfg.batch_size):
            run.train_step(idx, epoch)
            if run.step >= next_sync:
                run.recorder.flush()
                ask = (should_stop(), run.diverged_at is not None, pace.next(run.step)) if lead else (False, False, 0)
                verdict, steps = agree(shard, cancel=ask[0], diverged=ask[1], next_steps=ask[2])
                run.deliver(run.recorder.ready())
                if verdict is not None:
                    return verdict, epoch
                next_sync = run.step + steps
            else:
                run.deliver(run.recorder.ready())  # rank 0: chunks whose statistics have landed since
            if lead and cfg.eval_interval and run.step % cfg.eval_interval == 0:
                run.evaluate(epoch)
        if lead and not cfg.eval_interval:
            run.evaluate(epoch)
    if lead and cfg.eval_interval and run.step % cfg.eval_interval != 0:
        run.evaluate(cfg.epochs - 1)
    return "completed", cfg.epochs


def rank_device(name: str, rank: int) -> torch.device:
    """Rank r trains on cuda:r when the run's device is CUDA ("cuda", or "auto" where CUDA is present)."""
    device = resolve_device(name)
    return torch.device("cuda", rank) if device.type == "cuda" else device


def rank_main(spec: dict[str, Any]) -> None:
    """Rank spec["rank"]'s life (see trainer/launcher.py `_start`). Rank 0 sends its records on the events pipe
    and stops at the next sync point once the launcher writes STOP on its lifeline; a rank that fails sends
    ("error", time, reason) and exits with 1. Any rank exits at once when its lifeline closes (the launcher died)."""
    rank, world = int(spec["rank"]), int(spec["world"])
    events = Connection(spec["events_fd"], readable=False)
    stop = threading.Event()
    _name_process(f"cw-rank-{rank}")
    lifeline = Connection(spec["lifeline_fd"], writable=False)
    threading.Thread(target=_listen, args=(lifeline, stop), name="collapsewatch-lifeline", daemon=True).start()
    torch.set_num_threads(int(spec["threads"]))
    try:
        cfg = from_dict(spec["config"])
        shard = Shard(rank, world, rank_device(cfg.device, rank))
        init_group(shard, int(spec["port"]))
        sink = PipeSink(events) if rank == 0 else NullSink()
        train_rank(cfg, shard, sink, stop.is_set)
    except BaseException as exc:
        traceback.print_exc()
        reason = (describe_out_of_memory(exc) if isinstance(exc, Exception) else None) or f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            events.send(("error", time.time(), reason))
        os._exit(1)  # not a clean exit: the process group may be broken, and its teardown could wait on it
    with contextlib.suppress(Exception):  # the run has ended: a teardown that fails changes nothing
        dist.destroy_process_group()
    # and nothing is left to do: the interpreter's own teardown (torch's static destructors, threads of the
    # process group) is skipped, it has aborted a finished rank (SIGABRT) under load
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _name_process(name: str) -> None:
    """Show the rank in `ps` and `top` (Linux; elsewhere the name stays python's)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name)


def _listen(lifeline: Connection, stop: threading.Event) -> None:
    """Set `stop` at each message on the lifeline; exit the process at its EOF (the launcher closed it or died)."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            lifeline.recv_bytes()
            stop.set()
    os._exit(1)


if __name__ == "__main__":
    rank_main(json.loads(sys.argv[1]))
