"""A memory limit for the process that trains, and the reason a run gives when it hits it.

The budget check at submit (trainer/budget.py) keeps runs that are estimated too large from ever
starting; this is the backstop for an estimate that was wrong. `RLIMIT_DATA` counts the private
writable memory a process maps (every tensor's storage, Python's heap, thread stacks), not the
address space it merely reserves, so the torch runtime's large reservations do not trip it: an
allocation beyond it fails at once, torch raises, and the run fails with a reason that names the
limit while the worker process lives on to train the next one.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

MB = 2**20


def private_memory_mb() -> int:
    """This process's data segment now (VmData in /proc/self/status), the figure RLIMIT_DATA caps."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmData:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) // 1024 if found else 0


def limit_memory(extra_mb: int) -> int | None:
    """Cap this process at what it uses now plus `extra_mb` (its baseline: the interpreter, torch and its
    thread pools, loaded before this call). Returns the cap in MB, or None where it cannot be set."""
    if extra_mb <= 0:
        return None
    cap = private_memory_mb() + extra_mb
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard // MB)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (cap * MB, hard))
    except (ValueError, OSError):
        return None
    return cap


def current_limit_mb() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft // MB


def describe_out_of_memory(exc: BaseException) -> str | None:
    """The reason for a run that ran out of memory under this process's limit; None for other errors."""
    text = str(exc)
    host_oom = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in text and "DefaultCPUAllocator" in text
    )
    if not host_oom:
        return None
    limit = current_limit_mb()
    where = (
        f"this worker's memory limit (a data segment of {limit} MB: its baseline plus COLLAPSEWATCH_WORKER_MEMORY_MB)"
        if limit is not None
        else "the memory this machine had free"
    )
    detail = text.strip()
    return f"out of memory: the run needed more than {where}" + (f" ({detail})" if detail else "")
