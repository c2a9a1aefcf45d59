"""Test factories shared by the API tests: configs, runs, batch chunks, warnings, waiting."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session

import app.storage.models as models_module
from app.storage.models import Run
from app.worker.claim import run_worker
from app.worker.sink import DatabaseSink
from trainer import BATCH_COLUMNS, Advice, BatchChunk, CollapseWarning, EvalRecord, from_dict

T = TypeVar("T")
# TestClient's base URL: the server answers to its loopback names only (app/security.py)
LOCAL = "http://127.0.0.1"

# trains 4 batches in well under a second once torch is loaded
TINY = {"epochs": 1, "batch_size": 32, "hidden_sizes": [16], "data": {"n_samples": 128}}
# far more batches than any test waits for: something to cancel, kill or shut down
LONG = {"epochs": 10_000, "batch_size": 32, "hidden_sizes": [16], "data": {"n_samples": 256}}
# collapse-prone at the top learning rate: exploding logits within ~70 batches (about a second)
EXPLODING = {"lr": 10.0, "epochs": 5, "batch_size": 32, "hidden_sizes": [64], "data": {"n_samples": 512}}


def config(base: dict[str, Any] = TINY, **overrides: Any) -> dict[str, Any]:
    data = {**base.get("data", {}), **overrides.pop("data", {})}
    return {**base, **overrides, "data": data}


def add_run(engine: Engine, preset: str = "fixed", **overrides: Any) -> int:
    """A queued run straight in the database (what POST /api/runs stores), returns its id."""
    cfg = from_dict(config(**overrides), base=preset)
    with Session(engine) as session:
        run = Run(name=f"test {preset}", preset=preset, config=cfg.to_dict(), num_classes=cfg.num_classes)
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def make_chunk(
    start: int, n: int, *, num_classes: int = 8, seed: int = 0, step_every: int = 1, **columns: Any
) -> BatchChunk:
    """n batches from step `start` (every `step_every`), random finite values, given columns overridden."""
    rng = np.random.default_rng(seed + start)
    values = rng.normal(size=(n, len(BATCH_COLUMNS)))
    for name, value in columns.items():
        values[:, BATCH_COLUMNS.index(name)] = value
    steps = start + step_every * np.arange(n, dtype=np.int64)
    return BatchChunk(
        steps=steps,
        epochs=steps // 100,
        values=values,
        class_hist=rng.dirichlet(np.ones(num_classes), size=n),
    )


def make_warning(step: int = 10, kind: str = "one_hot", **evidence: float) -> CollapseWarning:
    return CollapseWarning(
        kind=kind,
        severity="critical",
        step=step,
        message=f"{kind} since step {step}",
        evidence=evidence or {"onehot_frac": 0.6},
        advice=Advice("Raise the temperature: 4 -> 5", {"temperature": 5.0}),
    )


def make_eval(step: int, **metrics: float) -> EvalRecord:
    base = {
        "objective": 1.0,
        "soft_ce": 1.2,
        "kl": 0.3,
        "accuracy": 0.5,
        "ece": 0.1,
        "ece_signed": 0.05,
        "brier": 0.4,
        "entropy_mean": 1.1,
        "target_entropy_mean": 0.5,
        "onehot_frac": 0.0,
        "maxprob_mean": 0.4,
    }
    return EvalRecord(
        step=step,
        epoch=0,
        metrics={**base, **metrics},
        pred_hist=[0.5, 0.5],
        target_hist=[0.5, 0.5],
        confusion=[[1, 0], [0, 1]],
    )


def write_stats(
    engine: Engine,
    run_id: int,
    chunks: list[BatchChunk],
    *,
    warnings: tuple[CollapseWarning, ...] = (),
    evals: tuple[EvalRecord, ...] = (),
    flush_every: int = 0,
) -> DatabaseSink:
    """Store records through the real sink (as a worker does) and wait until they are committed;
    `flush_every` n chunks makes the writer see them in many small drains, as during training."""
    sink = DatabaseSink(engine, run_id)
    for i, chunk in enumerate(chunks, 1):
        sink.on_batches(chunk)
        if flush_every and i % flush_every == 0:
            sink.flush()
    for record in evals:
        sink.on_eval(record)
    for warning in warnings:
        sink.on_warning(warning)
    sink.close()
    assert sink.error is None, sink.error
    return sink


def serve_app(app: Any, port: int = 0) -> tuple[Any, threading.Thread, str]:
    """The app on a real uvicorn server on 127.0.0.1 (a free port unless `port`): (server, thread, URL).
    Stop it with `server.should_exit = True` and `thread.join()`."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="uvicorn to start")
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def api_get(url: str, path: str) -> Any:
    """GET {url}/api{path} from a real server, as JSON (raises on an error status)."""
    import httpx

    return httpx.get(f"{url}/api{path}", timeout=10).raise_for_status().json()


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class WorkerThread:
    """`run_worker` in a thread of the test process (a real worker, without the process start-up)."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        self.stop = threading.Event()
        kwargs.setdefault("poll_seconds", 0.05)
        kwargs.setdefault("heartbeat_seconds", 0.2)
        self.thread = threading.Thread(
            target=run_worker, args=(engine,), kwargs={"stop": self.stop, "name": "test-worker", **kwargs}, daemon=True
        )

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the worker did not stop"


def health_without_workers(database: str) -> dict[str, Any]:
    """/api/health of an app that runs no workers of its own and has no run in progress."""
    return {
        "status": "ok",
        "cluster": "ok",
        "database": database,
        "workers_configured": 0,
        "workers_alive": 0,
        "worker_restarts": 0,
        "last_worker_exit": None,
        "busy_workers": 0,
        "hosts": [],
    }


# --- a user's own loop (the client library): a tiny CNN on scikit-learn's digits ----------------------------
DIGITS_BATCH = 64


def digits_soft_targets(device: str = "cpu") -> tuple[Any, Any]:
    """scikit-learn's 1,797 8x8 digits as (N, 1, 8, 8) images and soft targets: half the one-hot label,
    half the label shares of the image's 10 nearest neighbours (kNN smoothing)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    onehot = np.eye(10, dtype=np.float32)[digits.target]
    flat = x.reshape(len(x), -1)
    sq = (flat * flat).sum(1)
    neighbours = np.argsort(sq[:, None] + sq[None] - 2 * flat @ flat.T, axis=1)[:, :10]
    targets = 0.5 * onehot + 0.5 * onehot[neighbours].mean(1)
    return torch.from_numpy(x).to(device), torch.from_numpy(targets).to(device)


def tiny_cnn() -> Any:
    """Two convolutions and a linear head, 2.9k parameters."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10),
    )  # fmt: skip


def train_digits(run: Any, *, lr: float, epochs: int = 2, device: str = "cpu", seed: int = 0) -> int:
    """A plain PyTorch loop (Adam, soft cross-entropy) that logs every batch to `run`; returns how many it
    logged. CollapseDetected propagates out of it, as from a user's loop."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x, t = digits_soft_targets(device)
    model = tiny_cnn().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    logged = 0
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(DIGITS_BATCH):
            idx = idx.to(device)
            logits = model(x[idx])
            loss = -(t[idx] * F.log_softmax(logits, -1)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
            optimizer.step()
            run.log_batch(logits, t[idx], loss=loss, grad_norm=grad_norm, lr=lr, epoch=epoch)
            logged += 1
    with torch.no_grad():
        run.log_eval(model(x[:500]), t[:500])
    return logged


DIGITS_STEPS_PER_EPOCH = -(-1797 // DIGITS_BATCH)  # 29


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a test checks that the processes it caused are gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def skew_clock(monkeypatch: Any, by: timedelta, *, only_off_main: bool = False) -> int:
    """This process's clock, as the app reads it (`utcnow`, wherever it was imported), `by` off; with
    only_off_main for other threads only (the test's own thread, standing in for another host, keeps the true
    time). Returns how many modules it patched."""
    main, true_utcnow = threading.main_thread(), models_module.utcnow

    def utcnow() -> datetime:
        skewed = not only_off_main or threading.current_thread() is not main
        return datetime.now(UTC) + (by if skewed else timedelta(0))

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("app", "trainer", "collapsewatch") and getattr(module, "utcnow", None) is true_utcnow:
            monkeypatch.setattr(module, "utcnow", utcnow)
            patched += 1
    return patched
