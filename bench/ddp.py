"""One run on several processes: step time and statistics overhead for 1 vs N processes, side by side, and
what combining a chunk's statistics costs: the per-sample gather to rank 0 (what the trainer does) against a
packed all-reduce of sufficient statistics (what it could do instead).

On the CPU: 1 and 2 processes (gloo). With N >= 2 CUDA devices: 1, 2, 4 .. N GPUs (NCCL) as well.
Run: `.venv/bin/python -m bench.ddp [--epochs N] [--rounds N] [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import append_results, machine_line
from trainer import NullSink, RunInfo, TrainResult, from_dict, train
from trainer.distributed import Shard, gathered_stats, init_group, pack_chunk
from trainer.monitor import chunk_stats

CHUNK = 50  # recorded batches per gather: the default flush_batches


class Clock(NullSink):
    """The training loop's wall time, from the sink's start to its end (the ranks' start-up excluded)."""

    def __init__(self) -> None:
        self.started = self.ended = 0.0

    def on_start(self, info: RunInfo) -> None:
        self.started = time.perf_counter()

    def on_end(self, result: TrainResult) -> None:
        self.ended = time.perf_counter()


def step_ms(device: str, processes: int, stats: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(ms per step of the training loop, seconds from train() to its result) of one run."""
    cfg = from_dict(
        {
            "device": device,
            "processes": processes,
            "batch_size": args.batch,
            "epochs": args.epochs,
            "data": {"n_samples": args.samples, "val_fraction": 0.05},
            "stats_interval": 1 if stats else 1_000_000,  # off: step 0 alone is recorded
        }
    )
    clock = Clock()
    called = time.perf_counter()
    result = train(cfg, clock)
    if result.status != "completed":
        raise RuntimeError(f"{processes} processes: {result.status}: {result.error}")
    return 1e3 * (clock.ended - clock.started) / result.steps, time.perf_counter() - called


def end_to_end(device: str, counts: list[int], args: argparse.Namespace) -> list[str]:
    """Every (processes, statistics on/off) variant, rounds interleaved so that drift hits them alike."""
    times: dict[tuple[int, bool], list[float]] = {(p, s): [] for p in counts for s in (True, False)}
    starts: dict[int, list[float]] = {p: [] for p in counts}
    for _ in range(args.rounds):
        for p, s in times:
            ms, total = step_ms(device, p, s, args)
            times[p, s].append(ms)
            starts[p].append(total)
    lines = []
    for p in counts:
        on, off = statistics.median(times[p, True]), statistics.median(times[p, False])
        lines.append(
            f"- {device}, {p} process{'es' if p > 1 else ''}: {on:.2f} ms per step with statistics, {off:.2f} ms "
            f"without: overhead {on - off:+.2f} ms ({100 * (on - off) / off:+.0f}%); a whole run "
            f"(start-up included) {statistics.median(starts[p]):.1f} s"
        )
    return lines


def _micro_rank(rank: int, world: int, port: int, device_kind: str, queue: Any, batches: list[int], repeats: int):
    """A rank of the combine measurement; rank 0 puts {batch: timings} on `queue`."""
    device = torch.device("cuda", rank) if device_kind == "cuda" else torch.device("cpu")
    shard = Shard(rank, world, device)
    init_group(shard, port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    rows = {batch: _combine_one(shard, batch, repeats) for batch in batches}
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def _combine_one(shard: Shard, batch: int, repeats: int) -> dict[str, float]:
    """Time, for a chunk of global batches of `batch`, the gather against the all-reduces of sufficient
    statistics; rank 0 also times the statistics of the global batch (the gather's) against those of a rank's
    own share (what each rank would compute before an all-reduce)."""
    device, world, c = shard.device, shard.world, 8
    b = batch // world
    z = torch.randn(CHUNK, b, c, device=device) * 3
    p = torch.softmax(z / 4, -1)
    h = -(p * p.log()).sum(-1)
    t = torch.softmax(torch.randn(CHUNK, b, c, device=device), -1)
    h_t = -(t * t.log()).sum(-1)
    tensors = [(z[i], p[i], h[i], t[i], h_t[i]) for i in range(CHUNK)]
    scalars = [torch.rand((), device=device) for _ in range(6 * CHUNK)]
    # sufficient statistics per batch, summed: 9 per-sample means, logit sum and sum of squares, the class
    # histogram, per class sum and sum of squares of probs and targets (the diversities), a 64-bin entropy
    # histogram (p10, approximately); maxed: logit max, -logit min, spread max, -entropy min
    sums, maxes = torch.randn(CHUNK, 9 + 2 + c + 4 * c + 64, device=device), torch.randn(CHUNK, 4, device=device)

    def gather() -> list[torch.Tensor] | None:
        packed = pack_chunk(tensors, scalars, b)
        buffers = [torch.empty_like(packed) for _ in range(world)] if shard.rank == 0 else None
        dist.gather(packed, buffers, dst=0)
        return buffers

    def reduce() -> None:
        dist.all_reduce(sums)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)

    row = {"gather": _timed(gather, repeats, device), "all_reduce": _timed(reduce, repeats, device)}
    buffers = gather()
    if buffers is not None:
        sizes, values = [b] * world, torch.rand(CHUNK, 6, device=device)
        row["stats_global"] = _timed(
            lambda: gathered_stats(buffers, CHUNK, sizes, c, max_grad_norm=1.0, deploy_temperature=1.0),
            repeats,
            device,
            collective=False,
        )
        row["stats_local"] = _timed(
            lambda: chunk_stats(z, p, h, t, h_t, values, max_grad_norm=1.0, deploy_temperature=1.0),
            repeats,
            device,
            collective=False,
        )
        row["bytes"] = buffers[0].numel() * buffers[0].element_size()
    return row


def _timed(fn: Any, repeats: int, device: torch.device, *, collective: bool = True) -> float:
    """Median ms of `fn` (a collective's ranks lined up by a barrier first; CUDA synchronised after)."""
    fn()
    samples = []
    for _ in range(repeats):
        if collective:
            dist.barrier()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(1e3 * (time.perf_counter() - started))
    return statistics.median(samples)


def combine_costs(device_kind: str, world: int, batches: list[int], repeats: int) -> list[str]:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(
        _micro_rank, args=(world, store.port, device_kind, queue, batches, repeats), nprocs=world, start_method="spawn"
    )
    rows = queue.get()
    lines = []
    for batch, row in rows.items():
        lines.append(
            f"- {device_kind}, {world} processes, a chunk of {CHUNK} batches of {batch} ({batch // world} per rank, "
            f"{row['bytes'] / 1024:.0f} kB per rank): gather to rank 0 {row['gather']:.2f} ms, all-reduce of "
            f"sufficient statistics {row['all_reduce']:.2f} ms; statistics of the global batch on rank 0 "
            f"{row['stats_global']:.2f} ms, of a rank's share {row['stats_local']:.2f} ms"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=21_000, help="rows generated (95%% train)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30, help="timings per combine measurement")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.samples, args.rounds, args.repeats = 1, 2_000, 1, 3
    gpus = torch.cuda.device_count()
    load_before = os.getloadavg()[0]
    lines = end_to_end("cpu", [1, 2], args)
    lines += combine_costs("cpu", 2, [64, args.batch], args.repeats)
    if gpus >= 2:
        lines += end_to_end("cuda", [p for p in (1, 2, 4, 8) if p <= gpus], args)
        lines += combine_costs("cuda", gpus, [args.batch, 4096], args.repeats)
    header = (
        f"### One run on several processes: step time, statistics overhead, combining a chunk ({machine_line()}; "
        f"MLP 16-256-256-8, batch {args.batch}, {args.epochs} epochs of {int(args.samples * 0.95):,} rows; "
        f"medians of {args.rounds} interleaved rounds; load average 1 min before / after: {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f})"
    )
    print("\n".join([header, "", *lines]))
    if not args.quick:
        append_results([header, "", *lines])


if __name__ == "__main__":
    main()
