"""A real `collapsewatch serve` subprocess on a free loopback port, and Chromium, for the live benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_COMMAND = [sys.executable, "-m", "app"]  # a profiler may wrap it
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, proc: subprocess.Popen[bytes], seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{base}/api/health did not answer within {seconds} s")


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    pid: int


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process `pid` and by its live child processes."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    total = 0.0
    for child in children:
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += own(child)
    return own(pid), total


@contextmanager
def serve(db: Path, log: Path, workers: int, tree: Path = ROOT) -> Iterator[Server]:
    """`python -m app serve` of the checkout `tree` on `db` with `workers` worker processes. Its output
    (stdout and stderr) goes to `log`; it is stopped with SIGINT (workers end their runs) at exit."""
    port = free_port()
    command = [
        *SERVER_COMMAND, "serve", "--port", str(port), "--database-url", f"sqlite:///{db}",
        "--workers", str(workers), "--data-dir", str(db.parent / "data"),
    ]  # fmt: skip
    with log.open("w") as out:
        # its own process group, so the worker processes it starts go with it
        proc = subprocess.Popen(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, proc)
            yield Server(base, proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium through Playwright's sync API; yields the browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def load_average() -> str:
    """The 1/5/15-minute load, as `uptime` prints it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
