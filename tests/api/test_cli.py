"""The `collapsewatch` command: submit (against a live server) and serve's clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from factories import LONG, WorkerThread, config, wait_until
from fastapi import FastAPI
from sqlalchemy import Engine

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXPLODING_TOML = """
preset = "collapse-prone"
lr = 10.0
epochs = 5
batch_size = 32
hidden_sizes = [64]

[data]
n_samples = 512
"""


@pytest.fixture
def server_url(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free port in a thread of the test process."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="uvicorn")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_submit_wait_prints_progress_then_warnings_and_exits_0(
    server_url: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(EXPLODING_TOML)
    with WorkerThread(engine):
        code = main(["submit", str(path), "--server", server_url, "--wait", "--name", "from the shell"])
    out = capsys.readouterr().out
    assert code == 0, out
    run = httpx.get(f"{server_url}/api/runs/1").json()
    assert run["name"] == "from the shell" and run["preset"] == "collapse-prone" and run["config"]["lr"] == 10.0
    assert f"queued run 1 (from the shell): {server_url}/runs/1" in out
    assert f"[completed] step {run['steps']}" in out
    assert "advice: " in out and "overrides: {" in out
    assert out.rstrip().endswith("run 1 completed")


def test_submit_of_a_bad_config_names_the_field_and_exits_2(
    server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("temperature = 0\n[data]\nn_samples = 3\n")
    assert main(["submit", str(path), "--server", server_url]) == 2
    err = capsys.readouterr().err
    assert "config.temperature: must be in [0.05, 100.0], got 0" in err and "config.data.n_samples" in err
    assert httpx.get(f"{server_url}/api/runs").json()["total"] == 0
    path.write_text("temperature = [")
    assert main(["submit", str(path), "--server", server_url]) == 2
    assert "cannot read" in capsys.readouterr().err


def _soft_csv(rows: int = 96) -> str:
    lines = ["f0,f1,label"]
    for i in range(rows):
        lines.append(f"{(i % 7) / 7:.3f},{(i % 5) / 5:.3f},{'abc'[i % 3]}")
    return "\n".join(lines) + "\n"


def test_submit_uploads_a_local_table_and_trains_on_it(
    server_url: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.csv").write_text(_soft_csv())
    path = tmp_path / "run.toml"  # data.path is relative to the config file, as a user writes it
    path.write_text(
        "epochs = 1\nbatch_size = 16\nhidden_sizes = [8]\nmin_entropy = 0.5\n"
        '[data]\nkind = "table"\npath = "mine.csv"\nlabel_column = "label"\n'
    )
    with WorkerThread(engine):
        assert main(["submit", str(path), "--server", server_url, "--wait"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "uploaded mine.csv as dataset 1 (96 rows)" in out
    run = httpx.get(f"{server_url}/api/runs/1").json()
    assert run["dataset_id"] == 1 and run["status"] == "completed" and run["num_classes"] == 3
    # the stored dataset lives in the data directory, not at the user's path
    assert Path(run["config"]["data"]["path"]).parent != tmp_path


def test_submit_wait_exits_1_when_the_run_fails_and_3_without_a_server(
    server_url: str, engine: Engine, settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uploaded = httpx.post(
        f"{server_url}/api/datasets", files={"file": ("t.csv", _soft_csv().encode())}, data={"label_column": "label"}
    ).json()
    for stored in settings.data_dir.glob("*"):  # the stored table vanishes before the run starts
        stored.unlink()
    path = tmp_path / "missing.json"
    path.write_text(f'{{"epochs": 1, "dataset_id": {uploaded["id"]}, "min_entropy": 0.5}}')
    with WorkerThread(engine):
        assert main(["submit", str(path), "--server", server_url, "--wait"]) == 1
    assert "run 1 failed: " in capsys.readouterr().out
    assert main(["submit", str(path), "--server", "http://127.0.0.1:9"]) == 3
    path.write_text('{"data": {"kind": "table", "path": "nowhere.csv"}}')
    assert main(["submit", str(path), "--server", server_url]) == 2
    assert "is not a file" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_trains_with_its_workers_and_stops_them_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "app",
        "serve",
        "--port",
        str(port),
        "--workers",
        "1",
        "--database-url",
        f"sqlite:///{tmp_path / 'serve.db'}",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {**os.environ, "COLLAPSEWATCH_HEARTBEAT_SECONDS": "0.2"}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _healthy(url), timeout=30, interval=0.2, what="the server")
        run_id = httpx.post(f"{url}/api/runs", json={"config": config(LONG)}).json()["id"]
        run = wait_until(lambda: (r := httpx.get(f"{url}/api/runs/{run_id}").json())["steps"] > 0 and r, timeout=40)
        worker_pid = int(run["worker"].rsplit(":", 1)[1])
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        output = server.stdout.read() if server.stdout else ""
    assert server.returncode == 0, output
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # the worker process is gone, not orphaned
    from app.storage.engine import make_engine

    with make_engine(f"sqlite:///{tmp_path / 'serve.db'}").connect() as conn:
        status, error = conn.exec_driver_sql("SELECT status, error FROM run WHERE id = ?", (run_id,)).one()
    assert status == "cancelled" and "shut down" in error, output


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
