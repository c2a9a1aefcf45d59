"""The client's cost in a user's own loop: no logging vs collapsewatch vs W&B offline, TensorBoard, MLflow.

The same loop (model, data, soft-target loss, Adam) in every variant; each peer logs as many scalars per
step as collapsewatch records, computed the way a user would for it (`.item()` each). Rounds interleave the
variants, each a single long run. Run: `.venv/bin/python -m bench.sdk [--quick] [--shapes ...]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import append_results, machine_line
from bench.live_server import load_average, serve
from bench.models import SHAPES
from trainer.monitor import stats_from_logits

VARIANTS = ("none", "collapsewatch", "collapsewatch_offline", "wandb", "tensorboard", "mlflow")


class SmallCNN(nn.Module):
    """Two 3x3 conv layers on 1x28x28 images, then a linear head: a few ms per step on 2 cores."""

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 32, 7, 7)
        return self.head(x.flatten(1))


# name: (model factory, input shape, batch)
LOOPS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "dashboard_mlp": (SHAPES["dashboard"].build, SHAPES["dashboard"].input, SHAPES["dashboard"].batch),
    "cnn_28x28": (SmallCNN, (1, 28, 28), 64),
}


class Loop:
    """A user's loop: one model, 8 cached batches of random inputs and soft targets, Adam."""

    def __init__(self, name: str) -> None:
        build, shape, batch = LOOPS[name]
        torch.manual_seed(0)
        self.model = build()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x = [torch.randn(batch, *shape) for _ in range(8)]
        self.t = [torch.softmax(3 * torch.randn(batch, 8), -1) for _ in range(8)]
        self.step = 0

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = self.step % len(self.x)
        logits = self.model(self.x[i])
        loss = F.cross_entropy(logits, self.t[i])  # soft targets
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return logits, self.t[i], loss


# --- the loggers: each is (log(step, logits, targets, loss), close()) ---------------------------------
Logger = tuple[Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None], Callable[[], None]]


def _peer_stats(columns: tuple[str, ...]) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, float]]:
    """The statistics collapsewatch records, for one batch, as a user of a peer gets them: computed by the
    trainer's kernel and read one `.item()` at a time (a host sync each on a GPU)."""
    last = [time.perf_counter()]

    def stats(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            zeros = torch.zeros(6)
            zeros[0] = loss.detach()
            values, _ = stats_from_logits(
                logits.detach()[None], targets[None], zeros[None], temperature=1.0, label_smoothing=0.0,
                max_grad_norm=None, deploy_temperature=1.0,
            )  # fmt: skip
        out = {name: values[name].item() for name in columns if name in values}
        now = time.perf_counter()
        out["samples_per_s"] = logits.shape[0] / max(now - last[0], 1e-9)
        last[0] = now
        return out

    return stats


def _collapsewatch(base: str | None, tmp: Path) -> Logger:
    """The client with its defaults, against the server (`base`), or offline (None): the client's own cost."""
    import collapsewatch as cw

    if base is None:
        run = cw.init(name="bench-sdk", mode="offline", dir=tmp / "offline")
    else:
        run = cw.init(name="bench-sdk", server=base, dir=tmp / "spool")
    return (lambda step, z, t, loss: run.log_batch(z, t, loss=loss)), run.finish


def _wandb(tmp: Path, stats) -> Logger:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp), project="bench-sdk", settings=wandb.Settings(console="off"))

    def log(step: int, z: torch.Tensor, t: torch.Tensor, loss: torch.Tensor) -> None:
        run.log(stats(z, t, loss), step=step)

    return log, run.finish


def _tensorboard(tmp: Path, stats) -> Logger:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp / "tb"))

    def log(step: int, z: torch.Tensor, t: torch.Tensor, loss: torch.Tensor) -> None:
        for name, value in stats(z, t, loss).items():
            writer.add_scalar(name, value, step)

    return log, writer.close


def _mlflow(tmp: Path, stats) -> Logger:
    import mlflow

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the brief's file store; 3.17 refuses it otherwise
    mlflow.set_tracking_uri((tmp / "mlruns").as_uri())
    mlflow.config.enable_async_logging(True)
    mlflow.start_run()

    def log(step: int, z: torch.Tensor, t: torch.Tensor, loss: torch.Tensor) -> None:
        mlflow.log_metrics(stats(z, t, loss), step=step)

    def close() -> None:
        mlflow.end_run()
        mlflow.flush_async_logging()

    return log, close


def recorded_columns() -> tuple[str, ...]:
    """The columns collapsewatch stores for a loop that passes logits, targets and loss (no grad, no lr)."""
    from collapsewatch.recorder import LogitsRecorder

    recorder = LogitsRecorder(1)
    z, t = torch.randn(4, 8), torch.softmax(torch.randn(4, 8), -1)
    recorder.record(
        z, t, loss=torch.tensor(1.0), grad_norm=None, lr=None, step=0, epoch=0, temperature=1.0, label_smoothing=0.0
    )
    recorder.flush()
    return recorder.ready(wait=True)[0].chunk.columns


# --- measuring -----------------------------------------------------------------------------------------
def segment(loop: Loop, log: Callable | None, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        logits, targets, loss = loop.train_step()
        if log is not None:
            log(loop.step, logits, targets, loss)
    return (time.perf_counter() - start) / steps


def measure(
    name: str, make: dict[str, Callable[[], Logger]], steps: int, rounds: int
) -> tuple[dict[str, float], dict[str, tuple[float, float, float]], dict[str, float], dict[str, str]]:
    """Per variant: median s/step; per peer: median, p25, p75 of the per-round ratios over `none` minus 1;
    the end of run (close), once; the peers that could not start, and why."""
    variants = ["none", *make]
    loops = {v: Loop(name) for v in variants}  # each variant its own long run, same seed
    loggers, failed = {}, {}
    for v in make:
        try:
            loggers[v] = make[v]()
        except Exception as exc:  # a peer that cannot start here is skipped, and says why
            failed[v] = f"{type(exc).__name__}: {str(exc)[:160]}"
    variants = ["none", *loggers]
    logs = {"none": None, **{v: lg[0] for v, lg in loggers.items()}}
    for v in variants:
        segment(loops[v], logs[v], max(20, steps // 2))  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            times[v].append(segment(loops[v], logs[v], steps))
    end = {}
    for v, (_, close) in loggers.items():
        start = time.perf_counter()
        close()
        end[v] = time.perf_counter() - start
    over = {}
    for v in variants[1:]:
        ratios = [a / b - 1 for a, b in zip(times[v], times["none"], strict=True)]
        p25, p50, p75 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        over[v] = (p50, p25, p75)
    return {v: statistics.median(ts) for v, ts in times.items()}, over, end, failed


def _available(tmp: Path) -> dict[str, str]:
    """Why each peer cannot run here ("" when it can)."""
    out = {}
    for variant, module in (("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow")):
        try:
            __import__(module)
            out[variant] = ""
        except Exception as exc:  # any import failure means "skipped, and why"
            out[variant] = f"{type(exc).__name__}: {exc}"
    return out


@contextlib.contextmanager
def _server(tmp: Path) -> Iterator[str]:
    with serve(tmp / "sdk.db", tmp / "server.log", workers=1) as server:
        yield server.base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", nargs="*", default=list(LOOPS), help=f"{list(LOOPS)}")
    parser.add_argument("--steps", type=int, default=200, help="steps per segment")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS[1:]))
    parser.add_argument("--quick", action="store_true", help="a smoke run, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 30, 2
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tmp = Path(tempfile.mkdtemp(prefix="cw-sdk-"))
    columns = recorded_columns()
    missing = _available(tmp)
    skipped = {v: why for v, why in missing.items() if why and v in args.variants}
    lines = [
        f"### Client overhead in a user's loop ({machine_line()}; {torch.get_num_threads()} torch threads in "
        f"every variant; {args.rounds} rounds of {args.steps}-step segments, the variants back to back in a "
        f"rotating order, each a single long run; {load_average()} at the start)",
        "",
        f"Each peer logs {len(columns)} scalars per step, as many as collapsewatch records "
        "(its columns), computed by the trainer's kernel per batch and read by `.item()` each. collapsewatch: "
        "`cw.init(server=...)` against `collapsewatch serve` (1 worker, SQLite) on 127.0.0.1, on the same two "
        "cores, with the client's defaults, `log_batch(logits, targets, loss=loss)`; collapsewatch_offline: "
        '`cw.init(mode="offline")`, the client\'s own cost (the run written to disk, no server). '
        'W&B 0.31 `init(mode="offline")` + `log(dict, step)`; '
        "TensorBoard `add_scalar` each; MLflow-skinny `log_metrics(dict, step)`, async logging, file store.",
        "",
    ]
    lines += [f"Skipped: {v} ({why})." for v, why in skipped.items()]
    header = ["none", *(v for v in args.variants if v not in skipped)]
    lines += [
        "| loop | " + " | ".join(f"{v} (ms/step)" for v in header) + " | "
        + " | ".join(f"{v} overhead: median (p25 - p75)" for v in header[1:])
        + " | W&B / collapsewatch overhead | end of run, once |",
        "|" + "---|" * (2 * len(header) + 2),
    ]  # fmt: skip
    print("\n".join(lines), flush=True)
    with _server(tmp) as base:
        for name in args.shapes:
            make: dict[str, Callable[[], Any]] = {
                "collapsewatch": lambda: _collapsewatch(base, tmp),
                "collapsewatch_offline": lambda: _collapsewatch(None, tmp),
                "wandb": lambda: _wandb(tmp, _peer_stats(columns)),
                "tensorboard": lambda: _tensorboard(tmp, _peer_stats(columns)),
                "mlflow": lambda: _mlflow(tmp, _peer_stats(columns)),
            }
            make = {v: make[v] for v in header[1:]}
            seconds, over, end, failed = measure(name, make, args.steps, args.rounds)
            for v, why in failed.items():
                lines.append(f"Skipped on {name}: {v} could not start here ({why}).")
                print(lines[-1], flush=True)
            cw_o, wb_o = over.get("collapsewatch"), over.get("wandb")
            ratio = f"{wb_o[0] / cw_o[0]:.1f}x" if cw_o and wb_o and cw_o[0] > 0 else "n/a"
            lines.append(
                f"| {name} | " + " | ".join(f"{seconds[v] * 1e3:.3f}" if v in seconds else "skipped" for v in header)
                + " | " + " | ".join(
                    f"{100 * over[v][0]:+.1f}% ({100 * over[v][1]:+.1f}% - {100 * over[v][2]:+.1f}%)"
                    if v in over else "skipped" for v in header[1:])
                + f" | {ratio} | " + ", ".join(f"{v} {1e3 * s:.0f} ms" for v, s in end.items()) + " |"
            )  # fmt: skip
            print(lines[-1], flush=True)
    lines += [
        "",
        f"Overhead: per round, a variant's segment time over the `none` segment next to it, minus 1; the median "
        f"of those ratios and its IQR. {load_average()} at the end.",
    ]
    if not args.quick:
        append_results(lines)


if __name__ == "__main__":
    main()
