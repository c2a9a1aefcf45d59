"""The supervised pool of worker processes: each a spawned process running `run_worker`, replaced when it
dies; the pool reports its health into the database for every server to see (app/worker/hosts.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from app.worker.claim import default_worker_name, run_worker
from app.worker.hosts import HostReporter, PoolStatus, report_interval
from app.worker.lease import bound_idle_transactions
from trainer import train
from trainer.memory_limit import limit_memory

log = logging.getLogger(__name__)


def worker_process_main(
    database_url: str,
    name: str | None,
    heartbeat_seconds: float,
    stale_after_seconds: float,
    stop_pipe: Connection,
    torch_threads: int | None,
    nice: int = 0,
    memory_mb: int = 0,
    *,
    poll_seconds: float = 0.5,
    host: str | None = None,
    listen: bool = True,
) -> None:
    """Entry point of one spawned worker process; returns once the parent closes its end of `stop_pipe`
    (or dies, which closes it too). Named `name`, else `host:pid` (`host` defaults to the machine's name)."""
    from app.storage.engine import make_engine

    if nice:
        os.nice(nice)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the parent decides when workers stop. SIGTERM sent to
    # this process alone stops it cleanly (its run ends as cancelled, with the reason recorded).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_parent, args=(stop_pipe, stop), daemon=True).start()
    if torch_threads:
        import torch  # several workers share the cores: without this each would use all of them

        torch.set_num_threads(torch_threads)
    limit_worker_memory(memory_mb)
    engine = make_engine(database_url)
    bound_idle_transactions(engine, stale_after_seconds)
    try:
        run_worker(
            engine,
            name=name or default_worker_name(host),
            heartbeat_seconds=heartbeat_seconds,
            stale_after_seconds=stale_after_seconds,
            poll_seconds=poll_seconds,
            stop=stop,
            listen=listen,
        )
    finally:
        engine.dispose()


def limit_worker_memory(memory_mb: int) -> None:
    """Cap this worker process at its baseline plus `memory_mb` (0: no cap). A tiny run first loads what
    training loads lazily (the optimizer's compiled paths, the thread pool and its stacks), so the
    baseline holds the runtime and the cap measures a run's own memory."""
    if memory_mb <= 0:
        return
    train({"epochs": 1, "batch_size": 16, "hidden_sizes": [8], "data": {"n_samples": 64}})
    cap = limit_memory(memory_mb)
    if cap is None:
        log.warning("could not limit this worker's memory to %s MB more than it uses now", memory_mb)
    else:
        log.info("worker memory capped at %s MB (%s MB for a run)", cap, memory_mb)


def _watch_parent(stop_pipe: Connection, stop: threading.Event) -> None:
    """Set `stop` once the parent closes its end of this worker's own pipe, or dies. Not one Event shared
    by all workers: `set()` of a multiprocessing Event waits for every waiter to wake, a killed one never does."""
    with contextlib.suppress(EOFError, OSError):
        stop_pipe.recv_bytes()  # nothing is ever sent: this returns at EOF, when the parent closed or died
    stop.set()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


@dataclasses.dataclass
class _Slot:
    """One of the pool's places: its current process, and how quickly its predecessors died."""

    index: int
    process: Any = None
    stop_pipe: Connection | None = None  # the parent's end: closing it stops the worker
    started: float = 0.0
    quick_deaths: int = 0  # in a row, each soon after its start: the respawn delay doubles
    respawn_at: float | None = None


class WorkerPool:
    """N worker processes (multiprocessing 'spawn': no inherited engine, lock or CUDA state), kept at N:
    a supervising thread notices a death at once (process sentinels), logs it with the exit code and
    starts a replacement, later each time a replacement dies soon after starting (a crash loop). Unless `report`
    is off, a thread writes the pool's status into the database every few seconds (`role`: serve or worker)."""

    def __init__(
        self,
        database_url: str,
        size: int,
        *,
        heartbeat_seconds: float = 1.0,
        stale_after_seconds: float = 15.0,
        nice: int = 0,
        memory_mb: int = 0,
        respawn_delay: float = 0.5,
        max_respawn_delay: float = 30.0,
        healthy_after: float = 60.0,  # a worker that lived this long resets the delay
        host: str | None = None,  # workers are named host:pid (default: the machine's name)
        poll_seconds: float = 0.5,
        listen: bool = True,
        role: str = "serve",
        report: bool = True,
    ) -> None:
        self.database_url, self.size, self.nice, self.memory_mb = database_url, size, nice, memory_mb
        self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds
        self.respawn_delay, self.max_respawn_delay, self.healthy_after = respawn_delay, max_respawn_delay, healthy_after
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(size)]
        self._lock = threading.Lock()  # slots are changed by the supervisor and read by status() and stop()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.host, self.poll_seconds, self.listen, self.role, self.report = host, poll_seconds, listen, role, report
        self._reporter: HostReporter | None = None

    @property
    def identity(self) -> tuple[str, int] | None:
        """(host, pid) of the pool's row in `WorkerHost`, None while it does not report."""
        return (self._reporter.host, self._reporter.pid) if self._reporter is not None else None

    @property
    def processes(self) -> list[Any]:
        with self._lock:
            return [s.process for s in self._slots if s.process is not None]

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._supervisor = threading.Thread(target=self._supervise, name="collapsewatch-pool", daemon=True)
        self._supervisor.start()
        if self.report:
            from app.storage.engine import make_engine

            interval = report_interval(self.stale_after_seconds)
            engine = make_engine(self.database_url)
            self._reporter = HostReporter(engine, status=self.status, role=self.role, interval=interval, host=self.host)
            self._reporter.start()

    def status(self) -> PoolStatus:
        with self._lock:
            alive = sum(1 for s in self._slots if s.process is not None and s.process.is_alive())
            return PoolStatus(self.size, alive, self.restarts, self.last_exit)

    def _spawn(self, slot: _Slot) -> None:
        threads = max(1, (os.cpu_count() or 1) // max(1, self.size))
        timing = (self.heartbeat_seconds, self.stale_after_seconds)
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_process_main,
            args=(self.database_url, None, *timing, reader, threads, self.nice, self.memory_mb),
            kwargs={"poll_seconds": self.poll_seconds, "host": self.host, "listen": self.listen},
            name=f"collapsewatch-worker-{slot.index}",
        )
        process.start()
        reader.close()  # the child holds the only read end: it sees EOF when we close ours, or die
        slot.process, slot.stop_pipe, slot.started, slot.respawn_at = process, writer, time.monotonic(), None

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
                due = [s.respawn_at for s in self._slots if s.respawn_at is not None]
            timeout = min([1.0] + [max(0.0, at - time.monotonic()) for at in due])
            if sentinels:
                wait(sentinels, timeout)
            else:
                self._stopping.wait(timeout)
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self._slots:
                    if slot.process is not None and not slot.process.is_alive():
                        self._bury(slot)
                    if slot.respawn_at is not None and time.monotonic() >= slot.respawn_at:
                        self._spawn(slot)
                        self.restarts += 1

    def _bury(self, slot: _Slot) -> None:
        process, lived = slot.process, time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < self.healthy_after else 1
        delay = min(self.max_respawn_delay, self.respawn_delay * 2 ** (slot.quick_deaths - 1))
        self.last_exit = f"{process.name} (pid {process.pid}) died with {describe_exit(process.exitcode)}"
        log.warning("worker %s after %.0f s; starting another in %.1f s", self.last_exit, lived, delay)
        if slot.stop_pipe is not None:
            slot.stop_pipe.close()
        process.close()
        slot.process, slot.stop_pipe, slot.respawn_at = None, None, time.monotonic() + delay

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to stop (a run in progress ends as cancelled) and wait; kill stragglers."""
        with self._lock:  # once set, the supervisor starts nothing more
            self._stopping.set()
            slots = [(s.process, s.stop_pipe) for s in self._slots if s.process is not None]
            for slot in self._slots:
                slot.process, slot.stop_pipe, slot.respawn_at = None, None, None
        for _, pipe in slots:
            if pipe is not None:
                pipe.close()
        deadline = time.monotonic() + timeout
        for process, _ in slots:
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in slots:
            if process.is_alive():
                log.warning("worker %s did not stop in %.0f s; terminating it", process.name, timeout)
                process.kill()
                process.join()
        if self._supervisor is not None:
            self._supervisor.join()
        if self._reporter is not None:
            self._reporter.stop()
            self._reporter.engine.dispose()
