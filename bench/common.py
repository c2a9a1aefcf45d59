"""What every benchmark shares: a line naming the machine, and appending to bench/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_line(device: torch.device | None = None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    where = f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, torch {torch.__version__}"
    if device is not None and device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}; host {where}"
    return f"{dt.date.today().isoformat()}, {where}"


def append_results(lines: list[str]) -> None:
    """Append a block to bench/RESULTS.md (unless COLLAPSEWATCH_BENCH_NO_RECORD is set)."""
    if os.environ.get("COLLAPSEWATCH_BENCH_NO_RECORD"):
        return
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
