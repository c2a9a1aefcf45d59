"""Runs every example against a fresh dashboard and photographs each run's page for the README.

`.venv/bin/python examples/screenshots.py` (a few minutes on 2 cores; needs Debian's Chromium and the
examples' extras) writes examples/screenshots/<name>.png: the first screen of each run page, 1400 x 1000.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.live_server import chromium, serve  # noqa: E402

OUT = ROOT / "examples" / "screenshots"
# (picture name, script, options)
RUNS = [
    ("plain_pytorch", "plain_pytorch.py", []),
    ("plain_pytorch_collapse", "plain_pytorch.py", ["--lr", "0.3"]),
    ("lightning_module", "lightning_module.py", []),
    ("hf_trainer", "hf_trainer.py", ["--steps", "150", "--soft"]),
]


def run_example(server: str, script: str, options: list[str]) -> str:
    """The example's run page, as it prints it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--server", server, *options],
        capture_output=True, text=True, timeout=600, env=env, check=True,
    )  # fmt: skip
    found = re.search(r"warnings: (http://\S+/runs/\d+)$", done.stdout, re.MULTILINE)
    if not found:
        raise RuntimeError(f"{script} printed no run page: {done.stdout[-500:]}")
    return found.group(1)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with serve(Path(tmp) / "cw.db", Path(tmp) / "server.log", workers=0) as server:
            pages = {name: run_example(server.base, script, options) for name, script, options in RUNS}
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for name, url in pages.items():
                    page.goto(url)
                    page.wait_for_function("() => document.body.dataset.chartsReady === '1'", timeout=60_000)
                    page.wait_for_timeout(500)
                    page.screenshot(path=OUT / f"{name}.png")
                    print(f"{OUT / f'{name}.png'}: {url}")


if __name__ == "__main__":
    main()
