"""Each script in examples/ runs against a real server (a few steps) and leaves a completed run there."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = {  # script: (its extra's module, the options that keep it short)
    "plain_pytorch.py": (None, ["--epochs", "1", "--steps", "10"]),
    "lightning_module.py": ("pytorch_lightning", ["--epochs", "1", "--steps", "10"]),
    "hf_trainer.py": ("transformers", ["--steps", "10"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_an_example_runs_and_its_run_is_stored(server_url: str, script: str) -> None:
    module, options = SCRIPTS[script]
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the example's extra)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(EXAMPLES.parent)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--server", server_url, *options],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"^10 batches logged, \d+ warnings: (http://\S+/runs/(\d+))$", done.stdout, re.MULTILINE)
    assert found, done.stdout[-2000:]
    stored = httpx.get(f"{server_url}/api/runs/{found.group(2)}", timeout=10).raise_for_status().json()
    assert (stored["status"], stored["steps"], stored["external"]) == ("completed", 10, True)
    assert stored["name"] == f"examples/{script.removesuffix('.py')}"
