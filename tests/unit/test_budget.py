"""Run cost estimates and cancelling before training starts."""

from __future__ import annotations

from factories import TINY

from trainer import ListSink, from_dict, train
from trainer.budget import estimate


def test_the_estimate_grows_with_what_costs_memory_and_time() -> None:
    base = estimate(from_dict(TINY))
    wide = estimate(from_dict({**TINY, "hidden_sizes": [65536, 65536, 65536]}))
    many = estimate(from_dict({**TINY, "data": {"n_samples": 10_000_000}}))
    assert wide.parameters > 8e9 and wide.memory_bytes > 100 * 2**30  # three 65536-wide layers: ~129 GB
    assert many.data_bytes > 5 * 2**30 and many.steps > 1000 * base.steps
    assert estimate(from_dict({**TINY, "epochs": 10})).seconds > 5 * base.seconds
    assert "GB" in wide.describe() and "parameters" in wide.describe()


def test_a_run_cancelled_while_its_data_is_made_never_starts() -> None:
    sink = ListSink()
    result = train(from_dict(TINY), sink, should_stop=lambda: True)
    assert result.status == "cancelled" and result.steps == 0 and sink.info is None


def test_a_cancel_while_the_model_is_built_stops_before_training() -> None:
    calls = iter([False, True])  # heard after the model is built, before the first step
    result = train(from_dict(TINY), ListSink(), should_stop=lambda: next(calls, True))
    assert result.status == "cancelled" and result.steps == 0
