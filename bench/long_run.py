"""The dashboard on a run of a million batches: the downsampled stats request, a live client's increment,
and the run page becoming interactive in Chromium, all against the real server (uvicorn, SQLite file).

The run is written through the worker's `DatabaseSink`, so its rollup blocks are those of production.
Run: `.venv/bin/python -m bench.long_run [--rows 1000000] [--requests 30] [--loads 5]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from sqlmodel import Session

from app.storage.engine import init_db, make_engine
from app.storage.models import Run
from app.worker.sink import DatabaseSink
from bench.chunks import iter_chunks
from bench.common import append_results, machine_line
from bench.live_server import serve
from bench.page_load import VISITS, measure_page_loads
from trainer import EVAL_METRICS, Advice, CollapseWarning, EvalRecord, TrainResult, preset

ROOT = Path(__file__).resolve().parent.parent
STATS_POINTS = 2000  # what the run page asks for (app/pages/routes.py STATS_POINTS)
TARGETS_MS = {"stats": 150.0, "since": 10.0, "page": 1000.0}


def _eval(rng: np.random.Generator, step: int, epoch: int) -> EvalRecord:
    metrics = {name: float(abs(rng.normal(0.5, 0.1))) for name in EVAL_METRICS}
    hist = rng.dirichlet(np.full(8, 4.0)).tolist()
    confusion = rng.integers(0, 50, (8, 8)).tolist()
    return EvalRecord(step=step, epoch=epoch, metrics=metrics, pred_hist=hist, target_hist=hist, confusion=confusion)


def build_run(db: Path, rows: int, chunk: int, evals: int) -> tuple[int, float]:
    """A completed run of `rows` batches, an evaluation every rows/evals batches and two warnings,
    written as a worker does; returns the run id and the seconds the sink took."""
    engine = make_engine(f"sqlite:///{db}")
    init_db(engine)
    with Session(engine) as session:
        cfg = preset("fixed")
        run = Run(name=f"long run, {rows:,} batches", preset="fixed", config=cfg.to_dict(), status="running")
        session.add(run)
        session.commit()
        run_id = run.id
    assert run_id is not None
    rng = np.random.default_rng(1)
    every = max(1, rows // evals)
    sink = DatabaseSink(engine, run_id)
    start = time.perf_counter()
    for c in iter_chunks(rows, chunk, nan_share=0.001):
        sink.on_batches(c)
        last = int(c.steps[-1])
        if (last + 1) % every < len(c):
            sink.on_eval(_eval(rng, last, int(c.epochs[-1])))
        if last + 1 in (rows // 3 // chunk * chunk, rows // 2 // chunk * chunk):
            advice = Advice("Raise label_smoothing to 0.2.", {"label_smoothing": 0.2})
            sink.on_warning(
                CollapseWarning("exploding_logits", "warning", last, "Raw logits beyond ±10.", {"range": 12.5}, advice)
            )
    sink.on_end(TrainResult("completed", cfg.to_dict(), rows, rows // 1000, 3600.0, None, []))
    seconds = time.perf_counter() - start
    engine.dispose()
    if sink.error is not None:
        raise RuntimeError(f"writing the run failed: {sink.error!r}")
    return run_id, seconds


def time_requests(clients: dict[str, httpx.Client], url: str, n: int) -> dict[str, tuple[list[float], httpx.Response]]:
    """Per server, milliseconds per request (the whole body read), the servers taking turns, after
    two untimed warm-up requests each."""
    for client in clients.values():
        for _ in range(2):
            client.get(url).raise_for_status()
    out: dict[str, tuple[list[float], httpx.Response]] = {label: ([], None) for label in clients}  # type: ignore[misc]
    for _ in range(n):
        for label, client in clients.items():
            start = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - start) * 1e3
            response.raise_for_status()
            out[label][0].append(elapsed)
            out[label] = (out[label][0], response)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure_api(bases: dict[str, str], run_id: int, rows: int, n: int) -> dict[str, dict[str, object]]:
    clients = {label: httpx.Client(base_url=base, timeout=60) for label, base in bases.items()}
    try:
        # exactly what static/js/run_page.js asks for first (meta.stats_url: every column)
        stats = time_requests(clients, f"/api/runs/{run_id}/stats?max_points={STATS_POINTS}", n)
        # a live client: the rows after the last step it has (here, the last 10)
        since = time_requests(clients, f"/api/runs/{run_id}/stats?since_step={rows - 11}", n)
        # the floor: a request through the same server, session dependency and SELECT 1
        health = time_requests(clients, "/api/health", n)
    finally:
        for client in clients.values():
            client.close()
    out: dict[str, dict[str, object]] = {}
    for label in bases:
        body = stats[label][1].json()
        if not body["downsampled"] or len(body["steps"]) > STATS_POINTS or body["last_step"] != rows - 1:
            raise RuntimeError(f"{label}: unexpected stats answer: {len(body['steps'])} points")
        if since[label][1].json()["steps"] != list(range(rows - 10, rows)):
            raise RuntimeError(f"{label}: the since_step request did not return the last 10 steps")
        out[label] = {
            "stats_ms": stats[label][0],
            "stats_bytes": len(stats[label][1].content),
            "stats_points": len(body["steps"]),
            "stats_columns": len(body["columns"]),
            "bucket": body["bucket_size"],
            "since_ms": since[label][0],
            "since_bytes": len(since[label][1].content),
            "health_ms": health[label][0],
        }
    return out


def _verdict(value: float, key: str) -> str:
    return "met" if value < TARGETS_MS[key] else "MISSED"


def _api_rows(label: str, api: dict, n: int) -> list[str]:
    s50, s95 = pct(api["stats_ms"], 50), pct(api["stats_ms"], 95)
    i50, i95 = pct(api["since_ms"], 50), pct(api["since_ms"], 95)
    return [
        f"| GET /stats?max_points={STATS_POINTS}, every column (= the run page's first request), {n} requests "
        f"| {label} | {s50:.1f} ms | {s95:.1f} ms | < {TARGETS_MS['stats']:.0f} ms {_verdict(s95, 'stats')} "
        f"| {api['stats_bytes'] / 1e3:,.0f} kB JSON: {api['stats_points']} points x {api['stats_columns']} "
        f"columns + class histograms, buckets of {api['bucket']} batches |",
        f"| GET /stats?since_step=last-10 (a live client's increment), {n} requests | {label} | {i50:.1f} ms "
        f"| {i95:.1f} ms | < {TARGETS_MS['since']:.0f} ms {_verdict(i95, 'since')} "
        f"| {api['since_bytes'] / 1e3:.1f} kB |",
        f"| GET /api/health (floor: same server, session, SELECT 1), {n} requests | {label} "
        f"| {pct(api['health_ms'], 50):.1f} ms | {pct(api['health_ms'], 95):.1f} ms | | |",
    ]


def _page_rows(label: str, page: dict, n: int) -> list[str]:
    rows = []
    shown = "/".join(str(k) for k in page["shown"])
    for visit in VISITS:
        what = "empty browser profile" if visit == VISITS[0] else "Plotly cached by the browser"
        first, every = page["first_ms"][visit], page["all_ms"][visit]
        longest = statistics.median(page["longest_task_ms"][visit])
        rows += [
            f"| run page interactive in Chromium: the first screen's {shown} charts drawn, {visit} ({what}), "
            f"median of {n} | {label} | {statistics.median(first):.0f} ms | max {max(first):.0f} ms "
            f"| < {TARGETS_MS['page']:.0f} ms {_verdict(statistics.median(first), 'page')} "
            f"| longest task after it, until all eight drawn: median {longest:.0f} ms |",
            f"| run page: all eight charts drawn (no scrolling), {visit}, median of {n} | {label} "
            f"| {statistics.median(every):.0f} ms | max {max(every):.0f} ms | (< {TARGETS_MS['page']:.0f} ms: "
            f"{_verdict(statistics.median(every), 'page')}) | |",
        ]
    return rows


def report(args: argparse.Namespace, write_s: float, api: dict, pages: dict, load: tuple) -> list[str]:
    labels = list(api)
    lines = [
        f"### Long run: {args.rows:,} batches on the dashboard ({machine_line()}; uvicorn + SQLite file, "
        f"loopback; load average 1 min before / after: {load[0]} / {load[1]})",
        "",
        f"Run generated and written through DatabaseSink in {write_s:.1f} s ({args.rows / write_s:,.0f} rows/s, "
        "chunk generation and rollup blocks included)."
        if write_s == write_s
        else "Run reused from an earlier write (--keep).",
        "",
        "| measure | server | p50 | p95 | target | payload |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        lines += _api_rows(label, api[label], args.requests)
    for label in labels:
        lines += _page_rows(label, pages[label], args.loads)
    lines += [
        "",
        "Interactive: navigation start until the charts on the first screen (a 1400x1000 viewport; any part "
        "of a chart in it) show their first data: lines drawn, the class heatmap's image there; checked in the "
        "DOM every animation frame, so a frame was rendered then (the main thread was free to answer input). "
        "The page draws the charts below the fold when the browser is idle or when they are scrolled to: "
        "'all eight drawn' is when the last of them shows data without scrolling; 'longest task' is the "
        "longest main-thread task (Long Tasks API, 50 ms or more; 0: none) between the two, the longest an "
        "input would have waited. A visit is a new page load in the same browser profile.",
        "",
        "Where the time goes (medians, ms since navigation start):",
        "",
        *(
            f"- {label}, {visit}: "
            + ", ".join(f"{k} {v:.0f}" for k, v in pages[label]["breakdown"][visit].items())
            + f"; first screen drawn {statistics.median(pages[label]['first_ms'][visit]):.0f}"
            + f"; all eight drawn {statistics.median(pages[label]['all_ms'][visit]):.0f}"
            for label in labels
            for visit in (VISITS[0], VISITS[-1])
        ),
        "",
        "Peers (ANCHORS, measured earlier on these machines): the MLflow UI is reported unusable around 100k "
        "points per metric (mlflow#773, #5779); reading back 5k points of one metric takes 43 ms from MLflow's "
        "SQLite store and 985 ms from TensorBoard (it parses its event file). Here one request returns "
        f"{api[labels[-1]]['stats_points']:,} points of each of {api[labels[-1]]['stats_columns']} measures, "
        f"every bucket's min and max kept, out of {args.rows:,} batches.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50, help="rows per BatchChunk (flush_batches)")
    parser.add_argument("--evals", type=int, default=100, help="validation passes over the run")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--loads", type=int, default=5, help="browser profiles, each visiting the page 3 times")
    parser.add_argument("--keep", type=Path, help="keep the database at this path (reused if it exists)")
    parser.add_argument(
        "--before",
        type=Path,
        help="also serve this checkout (e.g. an earlier commit) on the same database, interleaved",
    )
    parser.add_argument("--before-label", default="before", help="what --before is, for the table")
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 10 requests, 2 loads: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.requests, args.loads = 50_000, 10, 2
    tmp = Path(tempfile.mkdtemp(prefix="cw-long-"))
    load_before = os.getloadavg()[0]
    try:
        db = args.keep or tmp / "long.db"
        if db.exists():
            run_id, write_s = 1, float("nan")
        else:
            run_id, write_s = build_run(db, args.rows, args.chunk, args.evals)
        print(f"run {run_id}: {args.rows:,} rows, written in {write_s:.1f} s", flush=True)
        trees = ({args.before_label: args.before.resolve()} if args.before else {}) | {"this tree": ROOT}
        with ExitStack() as stack:
            bases = {
                label: stack.enter_context(serve(db, tmp / f"server-{label}.log", workers=0, tree=tree)).base
                for label, tree in trees.items()
            }
            api = measure_api(bases, run_id, args.rows, args.requests)
            pages = measure_page_loads(bases, run_id, args.loads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = report(args, write_s, api, pages, (f"{load_before:.2f}", f"{os.getloadavg()[0]:.2f}"))
    print("\n".join(lines), flush=True)
    if not args.quick:  # a smoke run is not a result
        append_results(lines)


if __name__ == "__main__":
    main()
