"""The device-to-host transport of chunk statistics, kept apart from the kernels that compute them.

On CUDA: the kernels are queued at once, then one copy per tensor into pinned host memory, started without
waiting, and an event to poll: no chunk forces a host sync. On the CPU the kernels run in one background
thread of the process, so the training thread does not wait on them: a small model's step is bound by
Python and leaves the other core idle, and the statistics of a chunk take that idle time instead of the
step's.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

M = TypeVar("M")
Compute = Callable[[], tuple[torch.Tensor, ...]]

_executor: tuple[int, ThreadPoolExecutor] | None = None  # (pid, executor): a forked child makes its own
_executor_lock = threading.Lock()


def _one_intra_op_thread() -> None:
    # A thread's first parallel op sizes its OpenMP team from the process-wide count; its own team of 2 would
    # spin beside the training thread's after every op and double that thread's kernel times (measured on 2
    # cores). So: initialise this thread's count first, then set it to 1 (set_num_threads sets the calling
    # thread's OpenMP count and the process-wide default; the caller of _background() restores the default).
    torch.get_num_threads()
    torch.set_num_threads(1)


def _background() -> ThreadPoolExecutor:
    """The process's statistics thread (one: chunks of every recorder are computed in submission order),
    running its kernels on one intra-op thread."""
    global _executor
    with _executor_lock:
        if _executor is None or _executor[0] != os.getpid():
            threads = torch.get_num_threads()
            executor = ThreadPoolExecutor(1, thread_name_prefix="collapsewatch-stats", initializer=_one_intra_op_thread)
            executor.submit(int).result()  # the initializer has run
            torch.set_num_threads(threads)  # the default for threads started later, as it was
            _executor = (os.getpid(), executor)
        return _executor[1]


def _run_without_grad(compute: Compute) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():  # grad mode is per thread: the caller's no_grad does not reach this one
        return compute()


@dataclass
class _Pending(Generic[M]):
    host: tuple[torch.Tensor, ...] | Future[tuple[torch.Tensor, ...]]  # a future: computing on the CPU
    event: torch.cuda.Event | None  # CUDA: set when the copies have landed
    meta: M


class HostCopies(Generic[M]):
    """The transport of chunk statistics to the host, apart from the kernels that compute them.

    `submit(compute, meta)` runs `compute` (stack and reduce the chunk's tensors) where it costs the training
    thread least: on CUDA at once (the kernels are asynchronous), with one copy per tensor into pinned host
    memory started without waiting and an event recorded; on the CPU in the background thread. `push()`
    hands over tensors already computed. `ready()` returns, in order, what has landed, without waiting.
    `compute` must only read tensors the loop will not overwrite in place.
    """

    def __init__(self) -> None:
        self._pending: deque[_Pending[M]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(
        self, compute: Compute, meta: M, *, device: torch.device | str, on_done: Callable[[], object] | None = None
    ) -> None:
        """`on_done`: called, from the background thread, once a chunk computed there has landed."""
        if torch.device(device).type == "cpu":
            try:
                future = _background().submit(_run_without_grad, compute)
            except RuntimeError:  # the interpreter is exiting (a run finished at exit): compute here
                future = Future()
                future.set_result(_run_without_grad(compute))
            self._pending.append(_Pending(future, None, meta))
            if on_done is not None:
                future.add_done_callback(lambda _: on_done())
        else:
            with torch.no_grad():
                self.push(compute(), meta)

    def push(self, tensors: tuple[torch.Tensor, ...], meta: M) -> None:
        event = None
        if tensors[0].is_cuda:
            host = []
            for tensor in tensors:
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                pinned.copy_(tensor, non_blocking=True)
                host.append(pinned)
            tensors = tuple(host)
            event = torch.cuda.Event()
            event.record()
        self._pending.append(_Pending(tensors, event, meta))

    def ready(self, wait: bool = False) -> list[tuple[tuple[np.ndarray, ...], M]]:
        """What has landed; with `wait`, everything (a sync point, used at the end). A computation that
        raised raises here, in the caller's thread."""
        out = []
        while self._pending and (wait or _landed(self._pending[0])):
            p = self._pending.popleft()
            host = p.host.result() if isinstance(p.host, Future) else p.host
            if p.event is not None:
                p.event.synchronize()  # already complete unless `wait`
            out.append((tuple(t.numpy() for t in host), p.meta))
        return out


def _landed(p: _Pending[M]) -> bool:
    if isinstance(p.host, Future):
        return p.host.done()
    return p.event is None or p.event.query()
