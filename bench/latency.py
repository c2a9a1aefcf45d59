"""Live latency: from a batch's statistics leaving the trainer to its point drawn in Chromium's chart.

A real server (`collapsewatch serve --workers 0`) reads the SQLite file that this process trains into
through the worker's own path (claim_run, execute_run, DatabaseSink); a real Chromium tab follows the
run page. Run: `.venv/bin/python -m bench.latency [--steps 2000] [--rates 50,0] [--quick]`.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sqlmodel import Session

import app.worker.claim
import trainer.loop
from app.storage import crud
from app.storage.engine import make_engine
from app.storage.models import RunCreate
from app.worker.claim import claim_run, execute_run
from app.worker.sink import DatabaseSink
from bench.common import append_results, machine_line
from bench.live_server import chromium, load_average, serve
from trainer import preset
from trainer.data import load_data

PAGE_HOOKS = Path(__file__).with_name("latency_page.js")
WORKER = "bench-latency"
# per step: finished training, handed to the sink, committed, arrived over SSE, drawn (the first chart,
# and every stat chart on the first screen)
STAGES = ("finished", "handoff", "committed", "arrived", "drawn", "drawn_all")
STAT_CHARTS = ("chart-entropy", "chart-logits", "chart-confidence", "chart-loss", "chart-grad")
# the stat charts any part of which the viewport shows
ON_SCREEN = """(ids) => ids.filter((id) => {
  const r = document.getElementById(id).getBoundingClientRect();
  return r.bottom > 0 && r.top < window.innerHeight;
})"""
DRAWN_UP_TO = "([id, s]) => window.__cwLatency.drawn.some((d) => d[0] === id && d[2] >= s)"


class TimedSink(DatabaseSink):
    """The worker's sink, noting when each step is handed over and when its transaction committed."""

    made: ClassVar[list[TimedSink]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handoff: dict[int, float] = {}
        self.committed: dict[int, float] = {}
        super().__init__(*args, **kwargs)
        TimedSink.made.append(self)

    def on_batches(self, chunk: Any) -> None:
        now = time.time()
        self.handoff.update(dict.fromkeys(chunk.steps.tolist(), now))
        super().on_batches(chunk)

    def _write(self, records: list[tuple[str, Any]]) -> None:
        super()._write(records)  # returns after the commit
        now = time.time()
        for kind, payload in records:
            if kind == "batches":
                self.committed.update(dict.fromkeys(payload.steps.tolist(), now))


@contextmanager
def instrumented(rate: float) -> Iterator[dict[int, float]]:
    """Patch the trainer's step (paced to `rate` steps/s, 0 = full speed; yields when each step
    finished) and the worker's sink class, for one run."""
    original_step, original_sink = trainer.loop._Run.train_step, app.worker.claim.DatabaseSink
    finished: dict[int, float] = {}
    start: list[float] = []

    def train_step(run: Any, idx: torch.Tensor, epoch: int) -> None:
        if rate > 0:
            start or start.append(time.perf_counter())
            delay = start[0] + run.step / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        original_step(run, idx, epoch)
        finished[run.step - 1] = time.time()

    trainer.loop._Run.train_step = train_step  # type: ignore[method-assign]
    app.worker.claim.DatabaseSink = TimedSink  # type: ignore[misc]
    try:
        yield finished
    finally:
        trainer.loop._Run.train_step = original_step  # type: ignore[method-assign]
        app.worker.claim.DatabaseSink = original_sink  # type: ignore[misc]


def _first_time(records: list[list[Any]], first: int, last: int, stamp: int) -> dict[int, float]:
    """step -> the earliest record covering it; records hold a first step, a last step and a ms stamp."""
    out: dict[int, float] = {}
    for rec in sorted(records, key=lambda r: r[stamp]):
        for step in range(max(first, int(rec[first])), int(rec[last]) + 1):
            out.setdefault(step, rec[stamp] / 1000.0)
    return out


@dataclass
class Phase:
    rate: float
    status: str
    steps: int
    seconds: float
    times: dict[str, np.ndarray]  # stage -> (steps,) wall-clock seconds
    page_errors: list[str]
    on_screen: list[str]  # the stat charts the first screen shows
    below: str  # a stat chart below the fold, scrolled to after the run
    catch_up_ms: float  # from scrolling to it until it showed the last step


def run_phase(engine: Any, base: str, browser: Any, rate: float, epochs: int) -> Phase:
    with Session(engine) as session:
        label = f"{rate:g} steps/s" if rate else "full speed"
        crud.create_run(
            session=session, run_in=RunCreate(preset="fixed", name=f"latency {label}", config={"epochs": epochs})
        )
    run_id = claim_run(engine, worker=WORKER)
    assert run_id is not None
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(path=str(PAGE_HOOKS))
    page.goto(f"{base}/runs/{run_id}")
    page.wait_for_function("() => window.__cwLatency.opened > 0", timeout=60_000)  # following live
    TimedSink.made.clear()
    started = time.perf_counter()
    with instrumented(rate) as finished:
        status = execute_run(engine, run_id, worker=WORKER, heartbeat_seconds=1.0, shutdown=None)
    seconds = time.perf_counter() - started
    last = max(finished)
    page.wait_for_function(DRAWN_UP_TO, arg=["chart-entropy", last], timeout=120_000)
    on_screen = page.evaluate(ON_SCREEN, list(STAT_CHARTS))
    if "chart-entropy" not in on_screen or len(on_screen) == len(STAT_CHARTS):
        raise RuntimeError(f"expected the entropy chart on the first screen and one below it, not {on_screen}")
    below = [c for c in STAT_CHARTS if c not in on_screen][-1]  # kept its increments while off screen
    scrolled = time.perf_counter()
    page.locator(f"#{below}").scroll_into_view_if_needed()
    page.wait_for_function(DRAWN_UP_TO, arg=[below, last], timeout=60_000)
    catch_up_ms = (time.perf_counter() - scrolled) * 1000
    rec = page.evaluate("() => window.__cwLatency")
    page.close()
    sink = TimedSink.made[0]
    every = [_first_time([d for d in rec["drawn"] if d[0] == c], 1, 2, 5) for c in on_screen]
    by_stage = {
        "finished": finished,
        "handoff": sink.handoff,
        "committed": sink.committed,
        "arrived": _first_time(rec["arrived"], 0, 1, 2),
        "drawn": _first_time([d for d in rec["drawn"] if d[0] == "chart-entropy"], 1, 2, 5),
        # a step is on every chart of the first screen when the last of them has drawn it
        "drawn_all": {s: max(d[s] for d in every) for s in set.intersection(*(set(d) for d in every))},
    }
    steps = sorted(set.intersection(*(set(v) for v in by_stage.values())))
    times = {k: np.array([v[s] for s in steps]) for k, v in by_stage.items()}
    return Phase(rate, status, len(steps), seconds, times, errors, on_screen, below, catch_up_ms)


def _pct(values: np.ndarray) -> str:
    p50, p95 = np.percentile(values, [50, 95]) * 1000
    return f"{p50:.0f} / {p95:.0f} / {values.max() * 1000:.0f}"


def phase_rows(p: Phase) -> list[str]:
    t = p.times
    rate = f"{p.steps / p.seconds:.0f} steps/s" + (f" (paced at {p.rate:g})" if p.rate else " (full speed)")
    rows = [
        ("left trainer → drawn (entropy chart)", t["drawn"] - t["handoff"]),
        ("step finished → drawn (entropy chart)", t["drawn"] - t["finished"]),
        (
            f"left trainer → drawn on all {len(p.on_screen)} stat charts of the first screen",
            t["drawn_all"] - t["handoff"],
        ),
        ("  stage: step finished → left trainer (chunking)", t["handoff"] - t["finished"]),
        ("  stage: left trainer → committed (writer)", t["committed"] - t["handoff"]),
        ("  stage: committed → SSE event in the page", t["arrived"] - t["committed"]),
        ("  stage: SSE event → drawn (entropy chart)", t["drawn"] - t["arrived"]),
    ]
    return [f"| {rate} | {p.steps} | {name} | {_pct(v)} |" for name, v in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000, help="steps per phase (rounded up to whole epochs)")
    parser.add_argument("--rates", default="50,0", help="steps/s of each phase, 0 = full speed")
    parser.add_argument("--torch-threads", type=int, default=1, help="1: as a worker of `serve` on 2 cores")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    steps, rates = (300, [100.0, 0.0]) if args.quick else (args.steps, [float(r) for r in args.rates.split(",")])
    torch.set_num_threads(args.torch_threads)
    cfg = preset("fixed")
    epochs = math.ceil(steps / math.ceil(len(load_data(cfg.data).x_train) / cfg.batch_size))
    tmp = Path(tempfile.mkdtemp(prefix="cw-latency-"))
    db = tmp / "cw.db"
    load_before = load_average()
    with serve(db, tmp / "server.log", workers=0) as server, chromium() as browser:
        engine = make_engine(f"sqlite:///{db}")
        phases = [run_phase(engine, server.base, browser, rate, epochs) for rate in rates]
        engine.dispose()
    report(phases, load_before, load_average(), cfg, record=not args.quick)


def report(phases: list[Phase], load_before: str, load_after: str, cfg: Any, record: bool) -> None:
    lines = [
        "### Live latency: trainer → SQLite → SSE → Chromium chart (bench/latency.py)",
        "",
        f"{machine_line()}; {load_before} before, {load_after} after. One `collapsewatch serve --workers 0` "
        "subprocess on a SQLite file; the trainer in the benchmark process through the worker's own path "
        f"(claim_run, execute_run, DatabaseSink; 1 torch thread; flush_batches={cfg.flush_batches}, "
        f"flush_seconds={cfg.flush_seconds}); headless Chromium on the run page. Times are one wall clock "
        "(time.time(), Date.now()); 'drawn' is the animation frame after Plotly.extendTraces resolved; "
        "'SSE event in the page' is when the page's listener ran (a busy tab delays it). The tab shares the "
        "2 cores with the server and the trainer (a whole core of its own at full speed). The page redraws a "
        "chart at most once per animation frame and only while it is on screen (viewport 1400x1000): a "
        "chart below the fold keeps its increments and catches up when scrolled to (measured after the run).",
        "",
        "| trainer rate | steps | latency (ms) | p50 / p95 / max |",
        "| --- | --- | --- | --- |",
    ]
    for p in phases:
        lines += phase_rows(p)
    lines.append("")
    for p in phases:
        where = f"paced at {p.rate:g} steps/s" if p.rate else "full speed"
        lines.append(
            f"- {where}: {p.below}, below the fold during the run, scrolled into view after it: showed the "
            f"run's last step {p.catch_up_ms:.0f} ms later (scrolling included)."
        )
    verdicts = []
    for p in phases:
        p95 = float(np.percentile(p.times["drawn"] - p.times["handoff"], 95)) * 1000
        where = f"paced at {p.rate:g} steps/s" if p.rate else "full speed"
        verdicts.append(f"{where}: p95 {p95:.0f} ms, {'met' if p95 < 1000 else 'MISSED'}")
    lines += [
        "",
        f"Target p95 left trainer → drawn < 1 s: {'; '.join(verdicts)}. Peers refresh by polling every 7-30 s "
        "(ANCHORS, measured earlier on these machines).",
    ]
    bad = [
        f"{p.rate:g}: status {p.status}, page errors {p.page_errors}"
        for p in phases
        if p.status != "completed" or p.page_errors
    ]
    if bad:
        lines.append(f"Problems: {'; '.join(bad)}")
    print("\n".join(lines))
    if record:  # a smoke run is not a result
        append_results(lines)


if __name__ == "__main__":
    main()
