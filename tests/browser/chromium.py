"""What every browser test needs: Debian's Chromium and Playwright, and why a test skips without them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = ROOT / "test-output"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - the test extra installs it
    sync_api = None  # type: ignore[assignment]

# why browser tests cannot run here (each test module skips itself with it), or None
MISSING = (
    "Debian's Chromium is not installed at /usr/bin/chromium"
    if not CHROMIUM.exists()
    else "the playwright package is not installed"
    if sync_api is None
    else None
)
