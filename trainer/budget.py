"""What a run will cost before it starts: peak memory and training time, estimated from its config alone.

The server refuses a run above its budgets with these numbers, so an in-range config that needs tens of
gigabytes (hidden_sizes [65536] x 3, 10M samples, 100k features) never reaches a worker. The estimates
are deliberately on the high side: the constants below were measured on the built-in generator and MLP.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from trainer.config import TrainConfig

# peak bytes per (sample x (features + classes)) while the synthetic generator runs (tracemalloc: 23-26),
# and while a table is parsed and converted (text or Arrow columns, then float64, then float32)
GENERATOR_BYTES_PER_CELL = 28
TABLE_BYTES_PER_CELL = 48
# float32 parameter, its gradient and AdamW's two moments
BYTES_PER_PARAMETER = 16
# a hidden activation kept for backward, its gradient and the ReLU mask
BYTES_PER_ACTIVATION = 12
TORCH_BASELINE_BYTES = 400 * 2**20  # the torch runtime itself, before any tensor
# time: a fixed cost per optimizer step (Python, kernels' launch, the statistics) plus the arithmetic
# (measured on one core of a 2-core AMD EPYC: 6.4 ms per step of the default MLP with its statistics,
# ~25 GFLOP/s on a 1024-wide MLP; both rounded to the cautious side)
STEP_OVERHEAD_S = 8e-3
CPU_FLOPS_PER_S = 20e9


@dataclass(frozen=True)
class RunCost:
    memory_bytes: int
    data_bytes: int
    model_bytes: int
    parameters: int
    seconds: float
    steps: int

    def describe(self) -> str:
        return (
            f"about {_size(self.memory_bytes)} (data {_size(self.data_bytes)}, model and optimizer "
            f"{_size(self.model_bytes)} for {self.parameters:,} parameters) and about {_duration(self.seconds)} "
            f"for {self.steps:,} steps"
        )


def _size(n: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} kB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def estimate(cfg: TrainConfig, rows: int | None = None, features: int | None = None) -> RunCost:
    """Peak memory and time of `cfg`; a table's `rows` and `features` replace the generator's sizes."""
    table = cfg.data.kind == "table"
    n = int(rows if rows is not None else cfg.data.n_samples)
    f = int(features if features is not None else cfg.data.n_features)
    c = cfg.num_classes
    data = n * (f + c) * (TABLE_BYTES_PER_CELL if table else GENERATOR_BYTES_PER_CELL)
    widths = [f, *cfg.hidden_sizes, c]
    params = sum((a + 1) * b for a, b in pairwise(widths))
    n_val = max(1, round(n * cfg.data.val_fraction))
    n_train = max(1, n - n_val)
    batch = min(cfg.batch_size, n_train)
    hidden = sum(cfg.hidden_sizes) + c
    # a training step keeps every layer's output for backward; evaluation runs the whole validation
    # split at once, without gradients, two layers alive at a time
    activations = max(batch * hidden * BYTES_PER_ACTIVATION, n_val * 2 * max(widths[1:]) * 4)
    model = params * BYTES_PER_PARAMETER + activations
    steps_per_epoch = -(-n_train // batch)
    steps = steps_per_epoch * cfg.epochs
    flops = 6.0 * params * n_train * cfg.epochs + 2.0 * params * n_val * cfg.epochs
    seconds = steps * STEP_OVERHEAD_S + flops / CPU_FLOPS_PER_S
    return RunCost(
        memory_bytes=int(TORCH_BASELINE_BYTES + data + model),
        data_bytes=int(data),
        model_bytes=int(model),
        parameters=int(params),
        seconds=float(seconds),
        steps=int(steps),
    )
