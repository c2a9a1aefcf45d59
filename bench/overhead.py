"""Monitoring overhead on the training step: no statistics vs collapsewatch vs the TensorBoard way.

Same model, data, loss (fixed preset: smoothing, temperature, quadratic entropy penalty, class
weights, clipping, head L2) and optimiser in all three; rounds interleave the variants so drift
hits them alike. Run: `.venv/bin/python -m bench.overhead [--shapes ...] [--steps N]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import append_results, machine_line
from bench.models import SHAPES, Shape
from trainer import NullSink, TrainResult, preset
from trainer.loop import make_optimizer, optimization_step, record_step
from trainer.losses import balanced_class_weights
from trainer.monitor import StatsRecorder, stats_from_logits

VARIANTS = ("none", "collapsewatch", "tensorboard")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One shape's model, data and the three step functions."""

    def __init__(self, shape: Shape, device: torch.device, sink_factory: Callable[[], object]) -> None:
        torch.manual_seed(0)
        self.cfg = preset("fixed").replace(flush_batches=50)
        self.device = device
        self.model = shape.build().to(device)
        self.optimizer = make_optimizer(self.cfg, self.model)
        n_batches = 8
        self.x = [torch.randn(shape.batch, *shape.input, device=device) for _ in range(n_batches)]
        self.t = [torch.softmax(3 * torch.randn(shape.batch, 8, device=device), -1) for _ in range(n_batches)]
        self.weights = balanced_class_weights(torch.cat(self.t))
        self.sink_factory = sink_factory
        self.step = 0

    def _opt(self) -> tuple:
        i = self.step % len(self.x)
        out = optimization_step(self.model, self.optimizer, self.x[i], self.t[i], self.cfg, self.weights)
        self.step += 1
        return (i, *out)

    def run(self, variant: str, steps: int) -> float:
        """Seconds per step over `steps` steps (device work included: synced at both ends)."""
        recorder = StatsRecorder(
            8,
            self.device,
            50,
            label_smoothing=self.cfg.label_smoothing,
            max_grad_norm=self.cfg.max_grad_norm,
        )
        sink = self.sink_factory() if variant == "collapsewatch" else None
        writer = _tensorboard_writer() if variant == "tensorboard" else None
        _sync(self.device)
        start = time.perf_counter()
        for s in range(steps):
            i, logits, parts, grad_norm = self._opt()
            if variant == "collapsewatch":
                record_step(recorder, logits, parts, grad_norm, s, 0, self.cfg.lr)
                if recorder.full:
                    recorder.flush()
                for chunk in recorder.ready():
                    sink.on_batches(chunk)
            elif variant == "tensorboard":
                _log_like_tensorboard(writer, self.model, logits, self.t[i], parts, grad_norm, self.cfg, s)
        if variant == "collapsewatch":  # the end of a run: last chunk, and the writer drained
            recorder.flush()
            for chunk in recorder.ready(wait=True):
                sink.on_batches(chunk)
            sink.on_end(TrainResult("completed", {}, steps, 1, 0.0, None, []))
        _sync(self.device)
        elapsed = time.perf_counter() - start
        if writer is not None:
            writer.close()
        return elapsed / steps


def _tensorboard_writer():
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(tempfile.mkdtemp(prefix="cw-tb-"))


def _log_like_tensorboard(writer, model, logits, t, parts, grad_norm, cfg, step) -> None:
    """The usual way: each statistic computed for this batch, read with .item(), add_scalar'd."""
    with torch.no_grad():
        head_norm = torch.linalg.vector_norm(model.head.weight)
        values = torch.stack([parts.total, parts.ce, parts.entropy_term, parts.final_l2, grad_norm, head_norm])
        stats, hist = stats_from_logits(
            logits.detach()[None],
            t[None],
            values[None],
            temperature=cfg.temperature,
            label_smoothing=cfg.label_smoothing,
            max_grad_norm=cfg.max_grad_norm,
        )
    for name, value in stats.items():
        writer.add_scalar(name, value.item(), step)
    for c, share in enumerate(hist[0]):
        writer.add_scalar(f"hist/{c}", share.item(), step)


def _database_sink_factory(tmp: Path) -> Callable[[], object]:
    """The worker's real sink: a queue and one writer thread into a SQLite file."""
    from sqlmodel import Session

    from app.db import init_db, make_engine
    from app.models import Run
    from app.sink import DatabaseSink

    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    init_db(engine)

    def make() -> object:
        with Session(engine) as session:
            run = Run(name="bench", preset="fixed", status="running", config={})
            session.add(run)
            session.commit()
            return DatabaseSink(engine, run.id)

    return make


def measure(shape: Shape, device: torch.device, steps: int, rounds: int, sink_factory) -> dict[str, float]:
    bench = Bench(shape, device, sink_factory)
    for variant in VARIANTS:  # warm-up: allocator, kernels, file handles
        bench.run(variant, max(5, steps // 10))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            times[variant].append(bench.run(variant, steps))
    return {v: statistics.median(ts) for v, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shapes", nargs="*", help=f"default: all on CUDA, dashboard and mlp_small on CPU; {list(SHAPES)}"
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sink", choices=("database", "null"), default="database")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 30, 1
    device = torch.device(args.device)
    names = args.shapes or (list(SHAPES) if device.type == "cuda" else ["dashboard", "mlp_small"])
    tmp = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    factory = _database_sink_factory(tmp) if args.sink == "database" else NullSink
    lines = [
        f"### Monitoring overhead ({machine_line(device)}; {args.steps} steps x {args.rounds} rounds, medians; "
        f"collapsewatch's sink: {'DatabaseSink into a SQLite file' if args.sink == 'database' else 'none (NullSink)'})",
        "",
        "| shape | no stats (ms/step) | collapsewatch | TensorBoard way | collapsewatch overhead "
        "| TensorBoard overhead |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        t = measure(SHAPES[name], device, args.steps, args.rounds, factory)
        base = t["none"]
        lines.append(
            f"| {name} | {base * 1e3:.3f} | {t['collapsewatch'] * 1e3:.3f} | {t['tensorboard'] * 1e3:.3f} "
            f"| {100 * (t['collapsewatch'] / base - 1):+.1f}% | {100 * (t['tensorboard'] / base - 1):+.1f}% |"
        )
        print(lines[-1], flush=True)
    if not args.quick:
        append_results(lines)


if __name__ == "__main__":
    main()
