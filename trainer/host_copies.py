"""The device-to-host transport of chunk statistics, kept apart from the kernels that compute them.

On CUDA: the kernels are queued, then one copy per tensor into pinned host memory, started without
waiting, and an event to poll: no chunk forces a host sync. On the CPU the chunk is computed where it is
flushed. (A background thread for it was measured and dropped: on 2 cores, with torch's two intra-op threads
busy in the step, it saved nothing, 9-12% against 10-16% of a 0.8 ms step, and a thread's own OpenMP team
spinning beside the training thread's doubled that thread's kernel times until it was held to one thread.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

M = TypeVar("M")
Compute = Callable[[], tuple[torch.Tensor, ...]]


@dataclass
class _Pending(Generic[M]):
    host: tuple[torch.Tensor, ...]  # on the host, filled asynchronously on CUDA
    event: torch.cuda.Event | None
    meta: M


class HostCopies(Generic[M]):
    """The transport of chunk statistics to the host, apart from the kernels that compute them.

    `submit(compute, meta)` runs `compute` (stack and reduce the chunk's tensors) without autograd and
    `push()`es what it returns: on CUDA one copy per tensor into pinned host memory, started without
    waiting, and an event recorded; on the CPU the tensors are handed over as they are. `ready()` returns,
    in order, what has landed, asking the device without waiting (`Event.query`).
    """

    def __init__(self) -> None:
        self._pending: deque[_Pending[M]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, compute: Compute, meta: M) -> None:
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
        """What has landed; with `wait`, everything (a sync point, used at the end)."""
        out = []
        while self._pending and (wait or self._pending[0].event is None or self._pending[0].event.query()):
            p = self._pending.popleft()
            if p.event is not None:
                p.event.synchronize()  # already complete unless `wait`
            out.append((tuple(t.numpy() for t in p.host), p.meta))
        return out
