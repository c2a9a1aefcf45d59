"""`train()` of a config with `processes` > 1: one process per rank (`python -m trainer.ranks`), watched from here.

This process keeps the run's sink and `should_stop`: rank 0's records arrive through a pipe and go to the sink,
and a stop goes to rank 0 through its lifeline pipe. A rank that dies or fails ends the run as failed with its
reason ("rank 1 died (signal 9, SIGKILL)"), and the other ranks are killed at once: none waits on a dead peer and
none is left behind. The ranks rendezvous through a TCPStore served here, on a port the kernel picks. The ranks
are not multiprocessing's spawn children, which would re-run the caller's main script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.config import TrainConfig, processes_problem
from trainer.records import CollapseWarning, EvalRecord, TrainResult
from trainer.sinks import Sink

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often `should_stop` is asked and the ranks are looked at
FAILURE_GRACE_S = 1.0  # after a first failure, how long the other ranks' reports are awaited: the root cause
EXIT_GRACE_S = 10.0  # after rank 0's result, how long the other ranks get to exit before they are killed


@dataclass
class _Rank:
    index: int
    process: subprocess.Popen[bytes]
    events: Connection  # what the rank sends: a failure's reason; rank 0's records too
    lifeline: Connection  # the rank exits once this end closes; rank 0 stops when it reads STOP
    report: tuple[float, str] | None = None  # (time, reason) of the failure the rank reported


@dataclass
class _Progress:
    """What rank 0 has reported: the sink's records come through here, and a failed run's result from it."""

    steps: int = 0
    epochs: int = 0
    final_eval: EvalRecord | None = None
    warnings: list[CollapseWarning] = field(default_factory=list)
    result: TrainResult | None = None


def launch(
    cfg: TrainConfig,
    sink: Sink,
    should_stop: Callable[[], bool],
    *,
    on_spawned: Callable[[list[int]], None] | None = None,
) -> TrainResult:
    """Train `cfg` on cfg.processes ranks; like `train()`, never raises for a training failure. `on_spawned`
    receives the ranks' process ids, in rank order, once they are started."""
    started = time.perf_counter()
    progress = _Progress()
    try:
        status, error = _run(cfg, sink, should_stop, progress, on_spawned)
    except Exception as exc:  # the launcher's own failure (a process that could not start, a sink that raised)
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    duration = time.perf_counter() - started  # the ranks' start included: what the run took
    if status is None and progress.result is not None:
        result = dataclasses.replace(progress.result, duration_s=duration)
    else:
        result = TrainResult(
            status=status or "failed",
            config=cfg.to_dict(),
            steps=progress.steps,
            epochs=progress.epochs,
            duration_s=duration,
            final_eval=progress.final_eval,
            warnings=progress.warnings,
            error=error,
        )
    sink.on_end(result)
    return result


def _run(
    cfg: TrainConfig,
    sink: Sink,
    should_stop: Callable[[], bool],
    progress: _Progress,
    on_spawned: Callable[[list[int]], None] | None,
) -> tuple[str | None, str | None]:
    """(status, error) of a run that did not end with rank 0's result; (None, None) when it did."""
    problem = processes_problem(cfg.processes, cfg.device)
    if problem is not None:  # checked at submit on the server's machine; this is the worker's
        return "failed", problem
    if should_stop():
        return "cancelled", None
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    threads = max(1, torch.get_num_threads() // cfg.processes)  # the ranks share this process's cores
    ranks: list[_Rank] = []
    try:
        for index in range(cfg.processes):
            ranks.append(_start(cfg, index, store.port, threads))
        if on_spawned is not None:
            on_spawned([rank.process.pid for rank in ranks])
        return _watch(ranks, sink, should_stop, progress)
    finally:
        _end(ranks)
        del store


STOP = b"stop"


def _start(cfg: TrainConfig, index: int, port: int, threads: int) -> _Rank:
    events_read, events_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()
    spec = {"config": cfg.to_dict(), "rank": index, "world": cfg.processes, "port": port, "threads": threads}
    spec |= {"events_fd": events_write, "lifeline_fd": lifeline_read}
    # the child imports this very trainer package, wherever the caller found it
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainer.ranks", json.dumps(spec)],
            pass_fds=(events_write, lifeline_read),
            env=env,
        )
    finally:
        os.close(events_write)  # the rank holds the only write end: its exit shows here as EOF
        os.close(lifeline_read)
    return _Rank(index, process, Connection(events_read, writable=False), Connection(lifeline_write, readable=False))


def _watch(
    ranks: list[_Rank], sink: Sink, should_stop: Callable[[], bool], progress: _Progress
) -> tuple[str | None, str | None]:
    failed_at = ended_at = None
    stopping = False
    while True:
        wait([rank.events for rank in ranks if not rank.events.closed], POLL_S)  # a rank's exit closes its pipe
        for rank in ranks:
            _drain(rank, sink, progress)
        if not stopping and should_stop():
            stopping = True  # rank 0 reads it at the next sync point and every rank stops there
            with contextlib.suppress(OSError):
                ranks[0].lifeline.send_bytes(STOP)
        exited = all(rank.process.poll() is not None for rank in ranks)
        failed = any(rank.report is not None or rank.process.returncode not in (None, 0) for rank in ranks)
        if progress.result is not None:
            # rank 0 sends its result after the last collective: every statistic has reached it, and a rank
            # that fails in its teardown now changes nothing
            ended_at = ended_at or time.monotonic()
            if exited or time.monotonic() - ended_at > EXIT_GRACE_S:
                if failed:
                    log.warning("run ended %s; then %s", progress.result.status, _reason(ranks))
                return None, None
        elif failed:
            failed_at = failed_at or time.monotonic()
            if exited or time.monotonic() - failed_at > FAILURE_GRACE_S:
                return "failed", _reason(ranks)
        elif exited:
            return "failed", "rank 0 ended without a result"


def _drain(rank: _Rank, sink: Sink, progress: _Progress) -> None:
    """Hand on everything the rank has sent so far."""
    while not rank.events.closed and rank.events.poll():
        try:
            kind, *payload = rank.events.recv()
        except EOFError:
            rank.events.close()
            return
        if kind == "error":
            rank.report = rank.report or (payload[0], payload[1])
        elif kind == "start":
            sink.on_start(payload[0])
        elif kind == "batches":
            chunk = payload[0]
            progress.steps, progress.epochs = int(chunk.steps[-1]) + 1, int(chunk.epochs[-1])
            sink.on_batches(chunk)
        elif kind == "eval":
            progress.final_eval = payload[0]
            sink.on_eval(payload[0])
        elif kind == "warning":
            progress.warnings.append(payload[0])
            sink.on_warning(payload[0])
        elif kind == "end":
            progress.result = payload[0]


def _reason(ranks: list[_Rank]) -> str:
    """The root cause: a rank that died without a word (its peers' errors follow from it), else the earliest
    report (a rank that raised takes its connections down, and its peers then fail on them)."""
    for rank in ranks:
        code = rank.process.returncode
        if rank.report is None and code not in (None, 0):
            return f"rank {rank.index} died ({describe_exit(code)})"
    (_, reason), index = min((rank.report, rank.index) for rank in ranks if rank.report is not None)
    return f"rank {index} failed: {reason}"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _end(ranks: list[_Rank]) -> None:
    """Kill the ranks still running, reap every one, close our ends."""
    for rank in ranks:
        if rank.process.poll() is None:
            rank.process.kill()
    for rank in ranks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rank.process.wait(5.0)
        rank.events.close()
        rank.lifeline.close()
