"""Offline runs and `collapsewatch sync`: a run written to disk with no server, uploaded later to a real
server (uvicorn on a free port); syncing again stores nothing twice; a killed process's spool is uploaded
up to its last flush."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
from factories import DIGITS_STEPS_PER_EPOCH, api_get, train_digits

import collapsewatch as cw
from app import cli
from collapsewatch.sync import sync

COLLAPSING_LR = 0.3


def _offline_run(directory: Path, lr: float) -> tuple[int, cw.Run]:
    run = cw.init(
        name="offline digits", config={"lr": lr}, mode="offline", dir=directory, steps_per_epoch=DIGITS_STEPS_PER_EPOCH
    )
    logged = train_digits(run, lr=lr, epochs=1)
    assert run.finish() is True and run.id is None and run.url is None
    return logged, run


def _stored(url: str, run_id: int) -> tuple[object, ...]:
    run = api_get(url, f"/runs/{run_id}")
    evals = api_get(url, f"/runs/{run_id}/evals")
    warnings = api_get(url, f"/runs/{run_id}/warnings")
    return run["status"], run["steps"], run["last_step"], len(evals), [(w["kind"], w["step"]) for w in warnings]


def test_an_offline_run_is_written_to_disk_and_synced_once(tmp_path: Path, server_url: str) -> None:
    logged, run = _offline_run(tmp_path / "runs", COLLAPSING_LR)
    assert run.warnings, "the collapsing lr warns on the client, offline too"
    (kept,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in kept.iterdir()} == {"run.json", "records.jsonl"}

    (first,) = sync(tmp_path / "runs", server=server_url)
    assert first.error is None and first.ended and first.run_id is not None
    stored = _stored(server_url, first.run_id)
    assert stored == ("completed", logged, logged - 1, 1, [(w.kind, w.step) for w in run.warnings])
    summary = api_get(server_url, f"/runs/{first.run_id}")
    assert summary["external"] is True and summary["name"] == "offline digits" and summary["config"] == {"lr": 0.3}
    assert summary["duration_s"] < 60 and summary["data_lost"] is None

    (again,) = sync(tmp_path / "runs", server=server_url)
    assert (again.run_id, again.records, again.error) == (first.run_id, 0, None), "the second sync sends nothing"
    (kept / "sent.json").unlink()  # its resume point lost: everything is sent again, and stored once
    (third,) = sync(kept, server=server_url)
    assert third.run_id == first.run_id and third.error is None
    assert _stored(server_url, first.run_id) == stored
    assert len(api_get(server_url, "/runs")["items"]) == 1


def test_the_cli_syncs_a_folder_and_names_what_it_cannot_read(
    tmp_path: Path, server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logged, _ = _offline_run(tmp_path / "runs", 0.01)
    (tmp_path / "runs" / "junk").mkdir()
    (tmp_path / "runs" / "junk" / "run.json").write_text("{not json")
    assert cli.main(["sync", str(tmp_path / "runs"), "--server", server_url]) == 1
    out, err = capsys.readouterr()
    assert "records sent" in out and "junk holds no readable run.json" in err
    (item,) = api_get(server_url, "/runs")["items"]
    assert (item["status"], item["steps"]) == ("completed", logged)
    assert cli.main(["sync", str(tmp_path / "empty-nothing"), "--server", server_url]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_killed_loop_loses_at_most_its_last_flush(tmp_path: Path, server_url: str, client_spool: Path) -> None:
    """The server is down while the loop runs; the process is SIGKILLed; its spool is synced later."""
    script = textwrap.dedent(
        """
        import os, signal, sys, torch, collapsewatch as cw
        run = cw.init(name="killed", server="http://127.0.0.1:9", flush_batches=10, flush_seconds=60)
        logits, labels = torch.randn(16, 4), torch.randint(0, 4, (16,))
        for step in range(95):
            run.log_batch(logits, labels, step=step)
        records = next(p for p in __import__("pathlib").Path(os.environ["COLLAPSEWATCH_SPOOL"]).iterdir())
        import time
        deadline = time.monotonic() + 30
        while (records / "records.jsonl").read_bytes().count(b"\\n") < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (kept,) = client_spool.iterdir()
    lines = [json.loads(line) for line in (kept / "records.jsonl").read_bytes().splitlines()]
    batches = sum(line["batches"] for line in lines)
    assert 90 <= batches < 95 and all(line["path"] != "finish" for line in lines), "at most the last flush is lost"

    (result,) = sync(client_spool, server=server_url)
    assert result.error is None and not result.ended and "marks the run lost" in result.line()
    stored = api_get(server_url, f"/runs/{result.run_id}")
    assert (stored["status"], stored["steps"], stored["last_step"]) == ("running", batches, batches - 1)


def test_a_run_left_open_is_finished_at_interpreter_exit_with_every_batch(tmp_path: Path) -> None:
    """The loop ends without finish(): the exit hook computes the last chunk (the statistics thread is
    already shut down by then) and ends the run completed, every batch on disk."""
    script = textwrap.dedent(
        f"""
        import torch, collapsewatch as cw
        run = cw.init(name="left open", mode="offline", dir={str(tmp_path)!r}, flush_batches=10, flush_seconds=60)
        for step in range(25):
            run.log_batch(torch.randn(16, 4), torch.softmax(torch.randn(16, 4), -1), step=step)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "could not be computed" not in done.stderr, done.stderr[-2000:]
    (kept,) = tmp_path.iterdir()
    lines = [json.loads(line) for line in (kept / "records.jsonl").read_bytes().splitlines()]
    assert sum(line["batches"] for line in lines if line["path"] == "chunks") == 25
    assert lines[-1]["path"] == "finish" and lines[-1]["body"]["status"] == "completed"


def test_offline_mode_refuses_a_server_and_a_spool_that_cannot_be_made_is_only_logged(
    tmp_path: Path, server_url: str
) -> None:
    with pytest.raises(ValueError, match="offline"):
        cw.init(mode="offline", server=server_url)
    with pytest.raises(ValueError, match="mode must be"):
        cw.init(mode="later")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    run = cw.init(server=server_url, dir=blocked, flush_batches=5)  # the disk refuses: memory only
    for step in range(12):
        run.log_batch(torch.randn(8, 3), torch.randint(0, 3, (8,)), step=step)
    assert run.finish() is True
    assert httpx.get(f"{server_url}/api/runs/{run.id}").json()["steps"] == 12
