"""`collapsewatch serve | worker | submit`: the web app with its workers, extra workers, and a client.

`serve` runs uvicorn and N worker processes on one database; `worker` adds workers (e.g. on other
machines against PostgreSQL); `submit` queues a run from a TOML/JSON file and can wait for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from app.core.config import Settings, UnsafeBind, check_bind

LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"

EXIT_COMPLETED, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


def _settings(args: argparse.Namespace) -> Settings:
    keys = ("host", "port", "database_url", "workers", "data_dir", "token")
    overrides = {k: getattr(args, k, None) for k in keys}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.worker.pool import WorkerPool

    # the reaper's and the pool's messages (a lost run, a dead worker) with a time and a level
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = _settings(args)
    try:
        check_bind(settings)
    except UnsafeBind as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    app = create_app(settings)  # creates or upgrades the schema before any worker starts
    if settings.workers:
        app.state.worker_pool = WorkerPool(
            settings.database_url,
            settings.workers,
            heartbeat_seconds=settings.heartbeat_seconds,
            stale_after_seconds=settings.stale_after_seconds,
            nice=settings.worker_nice,
            memory_mb=settings.worker_memory_limit_mb,
        )
    print(
        f"collapsewatch: http://{settings.host}:{settings.port}  database {settings.database_url}  "
        f"workers {settings.workers}",
        flush=True,
    )
    # open event streams would hold a graceful shutdown forever: give them a few seconds
    # keep-alive 65 s instead of uvicorn's 5: a client that reuses a pooled connection just as the
    # server closes it sees a reset (httpx: ReadError); idle tabs and scripts hit that far less often
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, timeout_graceful_shutdown=3, timeout_keep_alive=65
    )
    # uvicorn handles SIGINT/SIGTERM (the lifespan then stops the workers) and re-raises the signal
    # afterwards: a handler of our own turns that into a normal exit with interpreter cleanup
    signal.signal(signal.SIGTERM, _exit_normally)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        uvicorn.Server(config).run()
    return 0


def _exit_normally(*_: object) -> None:
    raise SystemExit(0)


def worker(args: argparse.Namespace) -> int:
    from app.storage.engine import init_db, make_engine
    from app.worker.claim import default_worker_name, run_worker
    from app.worker.hosts import HostReporter, PoolStatus, report_interval
    from app.worker.lease import bound_idle_transactions
    from app.worker.pool import WorkerPool, limit_worker_memory

    # the pool logs each worker's death (with its exit code) and replacement
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    bound_idle_transactions(engine, settings.stale_after_seconds)  # before any connection is made
    init_db(engine)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    timing = {"heartbeat_seconds": settings.heartbeat_seconds, "stale_after_seconds": settings.stale_after_seconds}
    options = {"poll_seconds": args.poll_seconds, "listen": not args.no_listen}
    print(f"collapsewatch worker: {settings.workers or 1} on {settings.database_url}", flush=True)
    if (settings.workers or 1) == 1:
        limit_worker_memory(settings.worker_memory_limit_mb)
        # no pool to supervise: while this process lives, its one worker does
        reporter = HostReporter(
            engine,
            status=lambda: PoolStatus(configured=1, alive=1, restarts=0, last_exit=None),
            role="worker",
            interval=report_interval(settings.stale_after_seconds),
            host=args.name,
        ).start()
        try:
            run_worker(engine, name=default_worker_name(args.name), stop=stop, **timing, **options)
        finally:
            reporter.stop()
        return 0
    engine.dispose()
    memory_mb = settings.worker_memory_limit_mb
    pool = WorkerPool(
        settings.database_url, settings.workers, memory_mb=memory_mb, host=args.name, role="worker", **timing, **options
    )
    pool.start()
    try:
        while not stop.wait(1.0):  # until SIGINT or SIGTERM: the pool replaces workers that die
            pass
    finally:
        pool.stop()
    return 0


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    if not isinstance(values, dict):
        raise ValueError("the file must hold a table of config fields")
    return values


def submit(args: argparse.Namespace) -> int:
    import httpx

    try:
        values = _read_config_file(Path(args.config_file))
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        print(f"error: cannot read {args.config_file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    file_preset = values.pop("preset", None)
    body = {"preset": args.preset or file_preset or "fixed", "config": values, "name": args.name}
    if "dataset_id" in values:
        body["dataset_id"] = values.pop("dataset_id")
    data = values.get("data")
    table = None
    if isinstance(data, dict) and "path" in data:
        # the server never reads a path from a config: the table is uploaded as a dataset first
        table = Path(args.config_file).parent / str(data["path"])
        if not table.is_file():
            print(f"error: {args.config_file}: data.path {data['path']!r} is not a file", file=sys.stderr)
            return EXIT_BAD_INPUT
        values["data"] = {k: v for k, v in data.items() if k not in ("path", "kind", "label_column")}
    server = args.server.rstrip("/")
    try:
        with httpx.Client(base_url=server, timeout=30.0, headers=_auth_headers()) as client:
            if table is not None:
                dataset_id = _upload(client, table, data.get("label_column"))
                if dataset_id is None:
                    return EXIT_BAD_INPUT
                body["dataset_id"] = dataset_id
            response = client.post("/api/runs", json=body)
            if response.status_code == 422:
                print(f"error: {args.config_file} was rejected:", file=sys.stderr)
                for item in response.json()["detail"]:
                    print(f"  {'.'.join(str(p) for p in item['loc'][1:])}: {item['msg']}", file=sys.stderr)
                return EXIT_BAD_INPUT
            response.raise_for_status()
            run = response.json()
            print(f"queued run {run['id']} ({run['name']}): {server}/runs/{run['id']}", flush=True)
            return wait_for_run(client, run["id"]) if args.wait else EXIT_COMPLETED
    except httpx.HTTPError as exc:
        print(f"error: {server}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _auth_headers() -> dict[str, str]:
    """The server's token from COLLAPSEWATCH_TOKEN, as the server itself reads it."""
    token = os.environ.get("COLLAPSEWATCH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _upload(client: Any, table: Path, label_column: str | None) -> int | None:
    """Upload a local table as a dataset; its id, or None (the reason printed) when it is refused."""
    form = {"name": table.name} | ({"label_column": label_column} if label_column else {})
    with table.open("rb") as fh:
        response = client.post("/api/datasets", files={"file": (table.name, fh)}, data=form)
    if response.status_code in (400, 413, 415, 422):
        detail = response.json().get("detail")
        items = detail if isinstance(detail, list) else [{"msg": str(detail)}]
        print(f"error: {table} was rejected:", file=sys.stderr)
        for item in items:
            print(f"  {item.get('msg', item)}", file=sys.stderr)
        return None
    response.raise_for_status()
    dataset = response.json()
    print(f"uploaded {table.name} as dataset {dataset['id']} ({dataset['rows']} rows)", flush=True)
    return int(dataset["id"])


def _progress(run: dict[str, Any]) -> str:
    latest = run.get("latest") or {}
    parts = [f"[{run['status']}] step {run['steps']}"]
    for key, label, fmt in (
        ("loss", "loss", ".4f"),
        ("entropy_mean", "entropy", ".3f"),
        ("onehot_frac", "one-hot", ".0%"),
        ("hist_top_share", "top class", ".0%"),
    ):
        if isinstance(latest.get(key), int | float):
            parts.append(f"{label} {latest[key]:{fmt}}")
    return "  ".join(parts)


def wait_for_run(client: Any, run_id: int, poll_seconds: float = 1.0) -> int:
    """Print progress until the run finishes, then its warnings with advice; 0 only when it completed."""
    last_line, last_print = "", 0.0
    try:
        while True:
            run = client.get(f"/api/runs/{run_id}").raise_for_status().json()
            line = _progress(run)
            finished = run["status"] not in ("queued", "running")
            if line != last_line and (finished or time.monotonic() - last_print >= 2.0):
                print(line, flush=True)
                last_line, last_print = line, time.monotonic()
            if finished:
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        print(f"stopped waiting; run {run_id} goes on on the server", file=sys.stderr)
        return 130
    for w in client.get(f"/api/runs/{run_id}/warnings").raise_for_status().json():
        print(f"{w['severity'].upper()} {w['kind']} at step {w['step']}: {w['message']}")
        if w.get("advice"):
            print(f"  advice: {w['advice']['message']}  (overrides: {json.dumps(w['advice']['overrides'])})")
    print(f"run {run_id} {run['status']}" + (f": {run['error']}" if run.get("error") else ""))
    return EXIT_COMPLETED if run["status"] == "completed" else EXIT_NOT_COMPLETED


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600 seconds, got {text}")
    return value


def _host_name(text: str) -> str:
    if not 1 <= len(text) <= 100 or not text.isprintable() or any(c.isspace() or c == ":" for c in text):
        raise argparse.ArgumentTypeError(f"1 to 100 characters without spaces or ':', got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collapsewatch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="the web app plus N worker processes")
    p.add_argument("--host", help="default 127.0.0.1 (COLLAPSEWATCH_HOST)")
    p.add_argument("--port", type=int, help="default 8000 (COLLAPSEWATCH_PORT)")
    p.add_argument("--database-url", help="default sqlite:///./collapsewatch.db (COLLAPSEWATCH_DATABASE_URL)")
    p.add_argument("--workers", type=int, help="worker processes, 0 for none; default 2 (COLLAPSEWATCH_WORKERS)")
    p.add_argument("--data-dir", type=Path, help="where uploads are stored; default ./data")
    p.add_argument("--token", help="required beyond 127.0.0.1: clients send it as a Bearer token (COLLAPSEWATCH_TOKEN)")
    p.set_defaults(func=serve)

    p = commands.add_parser("worker", help="only workers (e.g. on another machine sharing a PostgreSQL database)")
    p.add_argument("--database-url", help="default sqlite:///./collapsewatch.db (COLLAPSEWATCH_DATABASE_URL)")
    p.add_argument("--workers", type=int, help="worker processes; default 2 (COLLAPSEWATCH_WORKERS)")
    p.add_argument(
        "--name",
        type=_host_name,
        help="this machine's name in worker names (NAME:pid) and at /api/health; default its host name",
    )
    p.add_argument(
        "--poll-seconds",
        type=_positive_seconds,
        default=0.5,
        help="seconds between claims while idle, default 0.5; on PostgreSQL a NOTIFY ends the wait at once",
    )
    p.add_argument("--no-listen", action="store_true", help="poll only: no LISTEN/NOTIFY wake-ups (PostgreSQL)")
    p.set_defaults(func=worker)

    p = commands.add_parser("submit", help="queue a run from a TOML or JSON config file")
    p.add_argument("config_file", help="config fields (may name a `preset`); nested [data] table allowed")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="default http://127.0.0.1:8000")
    p.add_argument("--preset", help="start from this preset (default: the file's `preset`, else fixed)")
    p.add_argument("--name", help="run name (default: '<preset> #<id>')")
    p.add_argument("--wait", action="store_true", help="print progress and warnings; exit 0 only if it completed")
    p.set_defaults(func=submit)

    p = commands.add_parser("sync", help="upload runs kept on disk (offline, or spooled while the server was away)")
    p.add_argument("directory", type=Path, help="a run's directory, or one holding several (e.g. ./collapsewatch)")
    p.add_argument("--server", help="default http://127.0.0.1:8000 (COLLAPSEWATCH_SERVER)")
    p.add_argument("--token", help="the server's token, if it has one (COLLAPSEWATCH_TOKEN)")
    p.add_argument("--timeout", type=float, default=60.0, help="give a run up after this many seconds unanswered")
    p.set_defaults(func=sync)
    return parser


def sync(args: argparse.Namespace) -> int:
    """Upload every run kept under the directory; 0 when all of them reached the server."""
    from collapsewatch.sync import sync as upload

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        results = upload(args.directory, server=args.server, token=args.token, timeout=args.timeout)
    except ValueError as exc:
        print(f"collapsewatch sync: {exc}", file=sys.stderr)
        return 2
    if not results:
        print(f"collapsewatch sync: {args.directory} holds no run (no run.json in it or its folders)", file=sys.stderr)
        return 2
    for result in results:
        print(result.line(), file=sys.stderr if result.error else sys.stdout)
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
