"""Shared by the browser tests: a real `collapsewatch serve` (one worker, a fresh SQLite file) per test
module, and a Chromium tab on it that fails its test if the page reports an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, OUTPUT, ROOT, sync_api

from bench.live_server import free_port, wait_healthy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    log = (tmp / "server.log").open("w")
    command = [sys.executable, "-m", "app", "serve", "--port", str(port), "--database-url",
               f"sqlite:///{tmp / 'cw.db'}", "--workers", "1", "--data-dir", str(tmp / "data")]  # fmt: skip
    # its own process group, so the worker processes it starts go with it
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, seconds=60)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def page(server: str) -> Iterator[sync_api.Page]:
    OUTPUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000}, base_url=server)
        tab.add_init_script(COUNT_PLOT_CALLS)
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield tab
        browser.close()
        assert not errors, f"the browser reported errors: {errors}"


# counts the page's Plotly calls by method and chart: window.__plotCalls["extendTraces chart-grad"]
COUNT_PLOT_CALLS = """window.__plotCalls = {};
let plotly;
Object.defineProperty(window, "Plotly", { configurable: true, get: () => plotly, set: (value) => {
  plotly = value;
  for (const name of ["newPlot", "react", "extendTraces", "relayout"]) {
    const call = value[name];
    value[name] = function (gd, ...rest) {
      const key = `${name} ${typeof gd === "string" ? gd : gd.id}`;
      window.__plotCalls[key] = (window.__plotCalls[key] ?? 0) + 1;
      return call.call(this, gd, ...rest);
    };
  }
} });"""
