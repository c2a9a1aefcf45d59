"""The statistics transport on the CPU: chunks computed in one background thread, off the training
thread, handed back in order; the thread's kernels on one intra-op thread, the caller's count untouched."""

from __future__ import annotations

import threading

import pytest
import torch

from trainer.host_copies import HostCopies

CPU = torch.device("cpu")


def _thread_and_count(value: float) -> tuple[torch.Tensor, ...]:
    return (torch.tensor([value, float(torch.get_num_threads()), float(threading.current_thread().ident or 0)]),)


def test_chunks_are_computed_off_the_callers_thread_and_come_back_in_order() -> None:
    copies: HostCopies[int] = HostCopies()
    started = threading.Event()
    release = threading.Event()

    def slow() -> tuple[torch.Tensor, ...]:
        started.set()
        release.wait(10)
        return _thread_and_count(0.0)

    copies.submit(slow, 0, device=CPU)
    for i in range(1, 4):
        copies.submit(lambda i=i: _thread_and_count(float(i)), i, device=CPU)
    assert started.wait(10), "the first chunk never started"
    assert copies.ready() == [], "nothing is handed back before the first chunk is done, so order is kept"
    release.set()
    out = copies.ready(wait=True)
    assert [meta for _, meta in out] == [0, 1, 2, 3]
    assert [arrays[0][0] for arrays, _ in out] == [0.0, 1.0, 2.0, 3.0]
    assert {arrays[0][2] for arrays, _ in out} != {float(threading.get_ident())}, "computed on the caller's thread"
    assert len(copies) == 0


def test_the_background_thread_runs_one_intra_op_thread_and_leaves_the_callers_count() -> None:
    threads = torch.get_num_threads()
    copies: HostCopies[None] = HostCopies()
    copies.submit(lambda: _thread_and_count(0.0), None, device=CPU)
    ((arrays, _),) = copies.ready(wait=True)
    assert arrays[0][1] == 1.0, "its own OpenMP team would spin beside the training thread's"
    assert torch.get_num_threads() == threads
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [threads], "a thread started later gets the process's count, not the statistics thread's"


def test_a_computation_that_raises_raises_in_the_callers_ready() -> None:
    copies: HostCopies[None] = HostCopies()

    def broken() -> tuple[torch.Tensor, ...]:
        raise ValueError("stack expects each tensor to be equal size")

    copies.submit(broken, None, device=CPU)
    with pytest.raises(ValueError, match="equal size"):
        copies.ready(wait=True)


def test_grad_mode_is_off_in_the_background_thread() -> None:
    copies: HostCopies[None] = HostCopies()
    copies.submit(lambda: (torch.tensor([float(torch.is_grad_enabled())]),), None, device=CPU)
    ((arrays, _),) = copies.ready(wait=True)
    assert arrays[0].tolist() == [0.0], "no autograd graph is built for the statistics"
