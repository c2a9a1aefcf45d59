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
from dataclasses import dataclass
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
        self.recorder: StatsRecorder | None = None
        self.sink: object | None = None
        self.writer: object | None = None

    def _opt(self) -> tuple:
        i = self.step % len(self.x)
        out = optimization_step(self.model, self.optimizer, self.x[i], self.t[i], self.cfg, self.weights)
        self.step += 1
        return (i, *out)

    def segment(self, variant: str, steps: int) -> float:
        """Seconds per step over `steps` more steps of one long run of this variant (device work
        included: synced at both ends). The recorder, sink and writer live across segments, as in a
        run of thousands of steps; what only happens at a run's end is timed once, in `finish`."""
        if variant == "collapsewatch" and self.recorder is None:
            cfg = self.cfg
            self.recorder = StatsRecorder(
                8, self.device, cfg.flush_batches, max_grad_norm=cfg.max_grad_norm, temperature=cfg.temperature,
                deploy_temperature=cfg.deploy_temperature,
            )  # fmt: skip
            self.sink = self.sink_factory()
        if variant == "tensorboard" and self.writer is None:
            self.writer = _tensorboard_writer()
        recorder, sink, writer = self.recorder, self.sink, self.writer
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            i, logits, parts, grad_norm = self._opt()
            if variant == "collapsewatch":
                record_step(recorder, logits, parts, grad_norm, self.step, 0, self.cfg.lr)
                if recorder.full:
                    recorder.flush()
                for chunk in recorder.ready():
                    sink.on_batches(chunk)
            elif variant == "tensorboard":
                _log_like_tensorboard(writer, self.model, logits, self.t[i], parts, grad_norm, self.cfg, self.step)
        _sync(self.device)
        return (time.perf_counter() - start) / steps

    def finish(self) -> dict[str, float]:
        """The end of each run, timed once (seconds): collapsewatch's last chunk and the writer drained,
        the TensorBoard writer flushed and closed."""
        out = {}
        if self.recorder is not None:
            start = time.perf_counter()
            self.recorder.flush()
            for chunk in self.recorder.ready(wait=True):
                self.sink.on_batches(chunk)
            self.sink.on_end(TrainResult("completed", {}, self.step, 1, 0.0, None, []))
            out["collapsewatch"] = time.perf_counter() - start
        if self.writer is not None:
            start = time.perf_counter()
            self.writer.close()
            out["tensorboard"] = time.perf_counter() - start
        return out


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

    from app.storage.engine import init_db, make_engine
    from app.storage.models import Run
    from app.worker.sink import DatabaseSink

    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    init_db(engine)

    def make() -> object:
        with Session(engine) as session:
            run = Run(name="bench", preset="fixed", status="running", config={})
            session.add(run)
            session.commit()
            return DatabaseSink(engine, run.id)

    return make


@dataclass
class Measured:
    seconds: dict[str, float]  # median seconds per step of each variant
    overhead: dict[str, tuple[float, float, float]]  # vs none: median, p25, p75 of the per-round ratios - 1
    end_of_run: dict[str, float]  # seconds, once per run


def measure(shape: Shape, device: torch.device, steps: int, rounds: int, sink_factory) -> Measured:
    """Rounds of short segments, the variants back to back in a rotating order: each round gives a
    ratio against the `none` segment next to it, so a machine that drifts (a shared VM here varies
    by 20% within minutes) moves both sides of a ratio alike."""
    bench = Bench(shape, device, sink_factory)
    for variant in VARIANTS:  # warm-up: allocator, kernels, file handles, the sink's writer thread
        bench.segment(variant, max(20, steps // 2))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            times[variant].append(bench.segment(variant, steps))
    end_of_run = bench.finish()
    overhead = {}
    for variant in VARIANTS[1:]:
        ratios = [t / base - 1 for t, base in zip(times[variant], times["none"], strict=True)]
        p25, p50, p75 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        overhead[variant] = (p50, p25, p75)
    return Measured({v: statistics.median(ts) for v, ts in times.items()}, overhead, end_of_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shapes", nargs="*", help=f"default: all on CUDA, dashboard and mlp_small on CPU; {list(SHAPES)}"
    )
    parser.add_argument("--steps", type=int, default=200, help="steps per segment")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--sink", choices=("database", "null"), default="database")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch's intra-op threads (0: torch's default); `serve` gives each of its workers "
        "cores // workers, so 1 with the default 2 workers on 2 cores",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 30, 2
    device = torch.device(args.device)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    names = args.shapes or (list(SHAPES) if device.type == "cuda" else ["dashboard", "mlp_small"])
    tmp = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    factory = _database_sink_factory(tmp) if args.sink == "database" else NullSink
    lines = [
        f"### Monitoring overhead ({machine_line(device)}; {args.rounds} rounds of {args.steps}-step segments, "
        "the three variants back to back in a rotating order, each a single long run; collapsewatch's sink: "
        f"{'DatabaseSink into a SQLite file' if args.sink == 'database' else 'none (NullSink)'}; "
        f"{torch.get_num_threads()} torch threads)",
        "",
        "| shape | no stats (ms/step) | collapsewatch | TensorBoard way | collapsewatch overhead: median "
        "(p25 - p75) of the rounds | TensorBoard overhead | end of run, once: collapsewatch / TensorBoard |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        m = measure(SHAPES[name], device, args.steps, args.rounds, factory)
        t, cw, tb = m.seconds, m.overhead["collapsewatch"], m.overhead["tensorboard"]
        lines.append(
            f"| {name} | {t['none'] * 1e3:.3f} | {t['collapsewatch'] * 1e3:.3f} | {t['tensorboard'] * 1e3:.3f} "
            f"| {100 * cw[0]:+.1f}% ({100 * cw[1]:+.1f}% - {100 * cw[2]:+.1f}%) | {100 * tb[0]:+.1f}% "
            f"| {1e3 * m.end_of_run['collapsewatch']:.1f} ms / {1e3 * m.end_of_run['tensorboard']:.1f} ms |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Overhead: per round, a variant's segment time over the `none` segment run next to it, minus 1; the "
        "median of those ratios. End of run: collapsewatch's last chunk computed and the writer drained and "
        "committed (`on_end` returned); TensorBoard's `SummaryWriter.close()`.",
    ]
    if not args.quick:
        append_results(lines)


if __name__ == "__main__":
    main()
