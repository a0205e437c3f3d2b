"""Headless Debian Chromium for rendering the report page in tests (fails, never skips)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise AssertionError("chromium not found: apt-get install chromium (Debian package)")
    return exe


def run_chromium(page: Path, *args: str, timeout: float = 120.0) -> str:
    """Load ``page`` in a fresh profile with ``args`` (e.g. ``--dump-dom``); return stdout."""
    with tempfile.TemporaryDirectory(prefix="cjllm-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout
