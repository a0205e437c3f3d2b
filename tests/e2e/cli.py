"""Running the ``cjllm`` command line as a subprocess, as a user would."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "essays"
# the installed entry point, run by this interpreter (works in any venv, no PATH needed)
CJLLM = [sys.executable, "-c", "from cjllm.cli import app; app(prog_name='cjllm')"]
# ``cjllm`` as a terminal runs it, for tests that press Ctrl-C (send SIGINT): a suite started
# in the background by a shell without job control (a CI runner, ``make test &``) runs with
# SIGINT ignored, its children inherit that, and the SIGINT would go unheard
INTERRUPTIBLE_CJLLM = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from cjllm.cli import app; app(prog_name='cjllm')",
]


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: no provider keys (so the mock judge is chosen), wide
    terminal, plus ``extra``."""
    out = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out.update({"COLUMNS": "160", "PYTHONUNBUFFERED": "1"})
    out.update(extra or {})
    return out


def run(
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CJLLM, *args],
        capture_output=True,
        text=True,
        env=env(extra_env),
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )


def comparison_rows(database: Path) -> list[tuple[str, str, str | None]]:
    """(request_correlation_id, status, winner) of every CJ comparison row in a SQLite DB."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
        return [
            (str(r[0]), str(r[1]), r[2])
            for r in conn.execute(
                "SELECT request_correlation_id, status, winner FROM cj_comparisons"
            )
        ]
