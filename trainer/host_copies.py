"""The device-to-host transport of chunk statistics, kept apart from the kernels that compute them.

One copy per tensor into pinned host memory, started without waiting, and an event to poll: no chunk
forces a host sync on CUDA.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

M = TypeVar("M")


@dataclass
class _Pending(Generic[M]):
    host: tuple[torch.Tensor, ...]  # on the host, filled asynchronously on CUDA
    event: torch.cuda.Event | None
    meta: M


class HostCopies(Generic[M]):
    """The transport of chunk statistics to the host, apart from the kernels that compute them.

    `push()` starts one copy per tensor into pinned host memory without waiting (CUDA) and records an
    event; `ready()` returns, in order, what has landed, asking the device without waiting
    (`Event.query`). On the CPU the tensors are handed over as they are.
    """

    def __init__(self) -> None:
        self._pending: deque[_Pending[M]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

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
