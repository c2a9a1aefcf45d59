"""The client library in a user's own loop: a tiny CNN on scikit-learn's digits, streamed to a real server
(uvicorn on a free port) or straight into the database, with the collapse detector on the client."""

from __future__ import annotations

import ast
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from factories import DIGITS_STEPS_PER_EPOCH, LOCAL, api_get, serve_app, train_digits, wait_until
from fastapi import FastAPI
from fastapi.testclient import TestClient

import collapsewatch as cw
from app.core.config import Settings
from collapsewatch.recorder import NEVER_MEASURED, LogitsRecorder
from collapsewatch.run import Run
from trainer import BATCH_COLUMNS, BatchChunk
from trainer.monitor import stats_from_logits

HEALTHY_LR, COLLAPSING_LR = 0.01, 0.3  # Adam on the tiny CNN: the second takes one class within an epoch


# --- what the client is made of -----------------------------------------------------------------------
def test_importing_the_client_loads_no_web_or_database_code() -> None:
    """Only database_url mode reaches into app/, and only once it is chosen (collapsewatch/database.py)."""
    package = Path(cw.__file__).parent
    offenders = []
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level: imported with the package
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "app"]
    assert offenders == []
    code = "import sys, collapsewatch; print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))"
    forbidden = ["app", "fastapi", "sqlmodel", "sqlalchemy", "starlette", "uvicorn", "jinja2", "plotly"]
    out = subprocess.run([sys.executable, "-c", code, *forbidden], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the statistics: the trainer's own, from logits and targets alone -------------------------------------
def test_a_batch_is_kept_by_reference_and_runs_no_kernel() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    rec = LogitsRecorder(100)
    batches = [(torch.randn(8, 4, requires_grad=True), torch.randint(0, 4, (8,)), torch.tensor(1.0)) for _ in range(5)]
    with Count() as count:
        for step, (z, t, loss) in enumerate(batches):
            rec.record(z, t, loss=loss, grad_norm=None, lr=0.1, step=step, epoch=0, temperature=1, label_smoothing=0)
        assert set(count.ops) <= {"aten.detach.default"}, count.ops  # a view of the same storage, no kernel
        rec.flush()
    assert len(count.ops) > 10, "the chunk's statistics are computed at flush"


def test_the_statistics_are_the_trainers_for_soft_targets_and_class_indices() -> None:
    torch.manual_seed(0)
    n, b, c = 4, 16, 5
    logits = torch.randn(n, b, c) * 3
    labels = torch.randint(0, c, (n, b))
    soft = torch.nn.functional.one_hot(labels, c).float()
    losses, grads = torch.rand(n), torch.tensor([0.5, 3.0, 0.2, 1.5])
    chunks = []
    for targets in (soft, labels):
        rec = LogitsRecorder(n, max_grad_norm=1.0)
        for i in range(n):
            rec.record(
                logits[i], targets[i], loss=losses[i], grad_norm=grads[i], lr=0.1, step=i, epoch=0,
                temperature=2.0, label_smoothing=0.1,
            )  # fmt: skip
        rec.flush()
        (recorded,) = rec.ready(wait=True)
        chunks.append(recorded.chunk)
    smoothed = soft * 0.9 + 0.1 / c
    ce = -(smoothed * torch.log_softmax(logits / 2.0, -1)).sum(-1).mean(-1)
    step_values = torch.stack([losses, ce, torch.zeros(n), torch.zeros(n), grads, torch.zeros(n)], dim=1)
    expected, hist = stats_from_logits(
        logits, soft, step_values, temperature=2.0, label_smoothing=0.1, max_grad_norm=1.0
    )
    for chunk in chunks:
        assert set(chunk.columns) == set(BATCH_COLUMNS) - NEVER_MEASURED
        for name in chunk.columns:
            if name in expected:
                assert chunk.column(name) == pytest.approx(expected[name].tolist(), rel=1e-5, abs=1e-6), name
        assert chunk.column("clipped").tolist() == [0.0, 1.0, 0.0, 1.0]
        assert chunk.column("lr").tolist() == [0.1] * 4 and (chunk.class_hist == hist.numpy()).all()
    without = LogitsRecorder(10)
    without.record(
        logits[0], soft[0], loss=None, grad_norm=None, lr=None, step=0, epoch=0, temperature=1, label_smoothing=0
    )
    without.flush()
    (recorded,) = without.ready(wait=True)
    assert {"loss", "grad_norm", "clipped", "lr"}.isdisjoint(recorded.chunk.columns), "never given: not recorded"
    view = recorded.detector_view  # the detector reads every column: the soft CE stands in for the loss
    assert view.column("loss") == pytest.approx(view.column("loss_ce")) and view.column("grad_norm").tolist() == [0.0]


class _Kept:
    """A transport that keeps what it is sent."""

    run_id, url, cancel_requested, dropped_batches, failure = None, None, False, 0, None

    def __init__(self) -> None:
        self.chunks: list[BatchChunk] = []
        self.ends: list[tuple[object, ...]] = []

    def start(self, info: dict) -> None:
        pass

    def send_chunk(self, chunk: BatchChunk) -> None:
        self.chunks.append(chunk)

    def send_eval(self, record: object) -> None:
        pass

    def send_warning(self, warning: object) -> None:
        pass

    def finish(self, *args: object) -> bool:
        self.ends.append(args)
        return True


def _kept_run(kept: _Kept, **kwargs: object) -> Run:
    options = {"steps_per_epoch": None, "stop_on": None, "on_warning": None, "flush_batches": 50}
    options |= {"flush_seconds": 0.25, "flush_timeout": 1, **kwargs}
    return Run(name="kept", config={}, transport=kept, **options)  # type: ignore[arg-type]


def test_the_first_chunk_waits_for_enough_targets_to_be_the_detectors_reference() -> None:
    kept = _Kept()
    run = _kept_run(kept, flush_seconds=0.02)
    time.sleep(0.1)  # the loop starts long after init (data loading, model building)
    for _ in range(20):
        run.log_batch(torch.randn(16, 4), torch.randint(0, 4, (16,)))
        time.sleep(0.01)
    run.finish()
    assert len(kept.chunks[0]) >= 8 and len(kept.chunks) >= 2, [len(c) for c in kept.chunks]
    assert [s for c in kept.chunks for s in c.steps.tolist()] == list(range(20))


def test_a_non_finite_loss_ends_the_run_diverged_and_bad_input_is_refused_at_once() -> None:
    kept = _Kept()
    run = _kept_run(kept)
    logits = torch.randn(8, 3)
    for step in range(3):
        run.log_batch(logits, torch.randint(0, 3, (8,)), loss=float("nan") if step == 2 else 1.0)
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        run.log_batch(logits, torch.rand(8, 4))
    with pytest.raises(ValueError, match="this run has 3 classes"):
        run.log_batch(torch.randn(8, 5), torch.randint(0, 5, (8,)))
    with pytest.raises(ValueError, match="steps must increase"):
        run.log_batch(logits, torch.randint(0, 3, (8,)), step=1)
    run.finish()
    assert [w.kind for w in run.warnings] == ["nonfinite_loss"] and kept.ends[0][0] == "diverged"
    with pytest.raises(RuntimeError, match="is finished"):
        run.log_batch(logits, torch.randint(0, 3, (8,)))


# --- a real server -----------------------------------------------------------------------------------
def test_a_cnn_on_digits_streams_every_batch_to_the_server(server_url: str) -> None:
    seen: list[cw.CollapseWarning] = []
    run = cw.init(
        name="digits cnn", config={"lr": HEALTHY_LR, "arch": "2-conv"}, server=server_url,
        steps_per_epoch=DIGITS_STEPS_PER_EPOCH, on_warning=seen.append, heartbeat_seconds=0.2,
    )  # fmt: skip
    logged = train_digits(run, lr=HEALTHY_LR)
    assert run.finish() is True
    assert logged == 2 * DIGITS_STEPS_PER_EPOCH and run.id is not None
    stored = api_get(server_url, f"/runs/{run.id}")
    assert (stored["status"], stored["external"], stored["steps"], stored["last_step"]) == (
        "completed", True, logged, logged - 1,
    )  # fmt: skip
    assert stored["config"] == {"lr": HEALTHY_LR, "arch": "2-conv"} and stored["num_classes"] == 10
    assert stored["data_lost"] is None and run.dropped_batches == 0
    stats = api_get(server_url, f"/runs/{run.id}/stats")
    assert stats["steps"] == list(range(logged)) and stats["epochs"][-1] == 1
    for name in set(BATCH_COLUMNS) - NEVER_MEASURED - {"clipped"}:
        assert all(v is not None and math.isfinite(v) for v in stats["columns"][name]), name
    assert all(v is None for v in stats["columns"]["head_weight_norm"]), "never measured: not recorded"
    assert all(v is None for v in stats["columns"]["clipped"]), "unknown without the loop's max_grad_norm"
    assert stats["columns"]["loss"][-1] < stats["columns"]["loss"][0], "the CNN learns"
    (ev,) = api_get(server_url, f"/runs/{run.id}/evals")
    assert ev["metrics"]["accuracy"] > 0.5
    assert run.warnings == seen == [], "a healthy run raises nothing"


def test_a_collapsing_loop_hears_its_warning_and_stop_on_raises(server_url: str) -> None:
    seen: list[cw.CollapseWarning] = []
    threads: set[int] = set()

    def on_warning(warning: cw.CollapseWarning) -> None:
        seen.append(warning)
        threads.add(threading.get_ident())

    with pytest.raises(cw.CollapseDetected) as caught, cw.init(
        name="too hot", config={"lr": COLLAPSING_LR}, server=server_url, stop_on="critical",
        steps_per_epoch=DIGITS_STEPS_PER_EPOCH, on_warning=on_warning, heartbeat_seconds=0.2,
    ) as run:  # fmt: skip
        train_digits(run, lr=COLLAPSING_LR)
    warning = caught.value.warning
    assert warning.severity == "critical" and warning in run.warnings and run.warnings == seen
    assert threads == {threading.get_ident()}, "on_warning is called in the loop's thread"
    assert warning.kind in str(caught.value) and warning.advice is not None
    stored = api_get(server_url, f"/runs/{run.id}")
    assert stored["status"] == "failed" and stored["error"].startswith("CollapseDetected: critical")
    assert stored["steps"] > 0 and stored["max_severity"] == "critical"
    server_warnings = api_get(server_url, f"/runs/{run.id}/warnings")
    assert [(w["kind"], w["step"]) for w in server_warnings] == [(w.kind, w.step) for w in run.warnings]


def test_an_unreachable_server_never_slows_the_loop(tmp_path: Path) -> None:
    hung = socket.socket()  # accepts connections into its backlog, never answers: every request times out
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        run = cw.init(server=f"http://127.0.0.1:{hung.getsockname()[1]}", flush_batches=10, flush_timeout=0.5)
        logits, targets = torch.randn(32, 8), torch.softmax(torch.randn(32, 8), -1)
        started, slowest = time.perf_counter(), 0.0
        for _ in range(300):
            t0 = time.perf_counter()
            run.log_batch(logits, targets, loss=1.0)
            slowest = max(slowest, time.perf_counter() - t0)
        assert slowest < 1.0 and time.perf_counter() - started < 10.0, f"the slowest log_batch took {slowest:.3f} s"
        t0 = time.perf_counter()
        assert run.finish() is False, "nothing could be sent"
        assert time.perf_counter() - t0 < 5.0 and run.id is None
    finally:
        hung.close()


def _refused_port() -> int:
    with socket.socket() as probe:  # a free port, with nothing on it yet: connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_that_comes_back_gets_everything_the_spool_kept(app: FastAPI, client_spool: Path) -> None:
    port = _refused_port()
    run = cw.init(
        server=f"http://127.0.0.1:{port}", flush_batches=20, flush_seconds=60, max_pending_batches=100,
        flush_timeout=30, heartbeat_seconds=0.2,
    )  # fmt: skip
    logits, labels = torch.randn(16, 4), torch.randint(0, 4, (16,))
    for step in range(300):
        run.log_batch(logits, labels, step=step)
    (kept,) = client_spool.iterdir()
    records = kept / "records.jsonl"

    def batches_on_disk() -> int:
        return sum(json.loads(line)["batches"] for line in records.read_bytes().splitlines())

    wait_until(lambda: batches_on_disk() == 300, timeout=20, what="the 300 batches on disk")
    assert run._transport._memory_batches <= 100, "past max_pending_batches the bodies wait on disk only"
    server, thread, url = serve_app(app, port)
    try:
        assert run.finish() is True and run.dropped_batches == 0
        stored = api_get(url, f"/runs/{run.id}")
        assert (stored["steps"], stored["last_step"], stored["status"]) == (300, 299, "completed")
        assert stored["data_lost"] is None
        assert not kept.exists(), "once the server has everything, the safety copy is removed"
    finally:
        server.should_exit = True
        thread.join(10)


def test_without_a_spool_the_oldest_are_dropped_and_the_run_hears_it(app: FastAPI, client_spool: Path) -> None:
    port = _refused_port()
    run = cw.init(
        server=f"http://127.0.0.1:{port}", flush_batches=20, flush_seconds=60, max_pending_batches=100,
        flush_timeout=30, heartbeat_seconds=0.2, spool=False,
    )  # fmt: skip
    logits, labels = torch.randn(16, 4), torch.randint(0, 4, (16,))
    for step in range(300):
        run.log_batch(logits, labels, step=step)
    wait_until(lambda: run.dropped_batches >= 200, timeout=20, what="the bounded buffer to drop the oldest")
    assert not client_spool.exists()
    server, thread, url = serve_app(app, port)
    try:
        assert run.finish() is True
        stored = api_get(url, f"/runs/{run.id}")
        dropped = run.dropped_batches
        assert stored["steps"] == 300 - dropped and stored["last_step"] == 299, "the newest batches wait"
        assert stored["status"] == "completed" and stored["data_lost"].startswith(f"{dropped} batches (between steps")
    finally:
        server.should_exit = True
        thread.join(10)


# --- straight into the database -----------------------------------------------------------------------
def test_database_url_mode_writes_through_the_workers_sink(settings: Settings, app: FastAPI) -> None:
    run = cw.init(
        name="db mode", config={"lr": HEALTHY_LR}, database_url=settings.database_url,
        steps_per_epoch=DIGITS_STEPS_PER_EPOCH,
    )  # fmt: skip
    logged = train_digits(run, lr=HEALTHY_LR, epochs=1)
    assert run.finish() is True and run.id is not None
    with TestClient(app, base_url=LOCAL) as client:
        stored = client.get(f"/api/runs/{run.id}").json()
        assert (stored["status"], stored["external"], stored["steps"], stored["num_classes"]) == (
            "completed", True, logged, 10,
        )  # fmt: skip
        assert stored["info"]["profile"]["num_classes"] == 10 and stored["info"]["steps_per_epoch"] == 29
        stats = client.get(f"/api/runs/{run.id}/stats?columns=entropy_mean,loss_ce,onehot_frac").json()
        assert stats["steps"] == list(range(logged))
        assert all(math.isfinite(v) for col in stats["columns"].values() for v in col)
        assert len(client.get(f"/api/runs/{run.id}/evals").json()) == 1


def test_a_with_block_that_raises_fails_the_run_with_the_exceptions_type(settings: Settings, app: FastAPI) -> None:
    run = cw.init(name="boom", database_url=settings.database_url)
    with pytest.raises(RuntimeError, match="out of data"), run:
        for step in range(5):
            run.log_batch(torch.randn(4, 3), torch.randint(0, 3, (4,)), step=step)
        raise RuntimeError("out of data")
    with TestClient(app, base_url=LOCAL) as client:
        stored = client.get(f"/api/runs/{run.id}").json()
    assert (stored["status"], stored["error"], stored["steps"]) == ("failed", "RuntimeError: out of data", 5)


def test_an_uncaught_exception_at_interpreter_exit_fails_the_run(settings: Settings, app: FastAPI) -> None:
    script = textwrap.dedent(
        f"""
        import torch, collapsewatch as cw
        run = cw.init(name="script", database_url={settings.database_url!r})
        for step in range(3):
            run.log_batch(torch.randn(4, 3), torch.softmax(torch.randn(4, 3), -1))
        raise ValueError("the loader ran dry")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ValueError: the loader ran dry" in done.stderr, done.stderr[-2000:]
    with TestClient(app, base_url=LOCAL) as client:
        (item,) = client.get("/api/runs").json()["items"]
        stored = client.get(f"/api/runs/{item['id']}").json()
    assert (stored["status"], stored["error"], stored["steps"]) == ("failed", "ValueError: the loader ran dry", 3)


def test_a_chunk_ends_before_the_tensors_it_holds_pass_64_mb() -> None:
    rec = LogitsRecorder(1024)
    small = (torch.randn(256, 8), torch.softmax(torch.randn(256, 8), -1))
    for step in range(10):
        rec.record(*small, loss=None, grad_norm=None, lr=None, step=step, epoch=0, temperature=1, label_smoothing=0)
    assert not rec.full, "16 kB a batch: the chunk holds up to its 1,024 batches"
    big = (torch.randn(2048, 2000), torch.softmax(torch.randn(2048, 2000), -1))  # 32 MB a batch
    rec.record(*big, loss=None, grad_norm=None, lr=None, step=10, epoch=0, temperature=1, label_smoothing=0)
    assert len(rec) == 1 and not rec.full, "a batch of another shape starts a chunk of its own"
    rec.record(*big, loss=None, grad_norm=None, lr=None, step=11, epoch=0, temperature=1, label_smoothing=0)
    assert rec.full, "two such batches are 64 MB kept alive: the chunk is full"
    rec.flush()
    assert [len(r.chunk) for r in rec.ready(wait=True)] == [10, 2]
