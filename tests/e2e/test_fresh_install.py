"""The README quick start on a clean clone in a fresh virtual environment (a real install)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import REPO

# a real pip install and ranking (CPU-bound: about three minutes on a 2-core machine that
# others load, more when it is busier) outgrow the suite's 300s hang guard; this one covers
# the timeouts of its steps (clone, venv, install-and-rank)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _clean_env(venv: Path) -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    out = {k: v for k, v in os.environ.items() if k not in drop and not k.endswith("_API_KEY")}
    out["PATH"] = f"{venv / 'bin'}{os.pathsep}{out.get('PATH', '')}"
    out["VIRTUAL_ENV"] = str(venv)
    out["COLUMNS"] = "160"
    return out


def _readme_quick_start(readme: Path) -> str:
    """The one command in the README's quick-start code block."""
    section = readme.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_quick_start_on_a_clean_clone_in_a_fresh_venv(tmp_path: Path) -> None:
    clone = tmp_path / "cjllm"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    environ = _clean_env(venv)

    # the README's quick start, exactly as written there, in the clone
    command = _readme_quick_start(clone / "README.md")
    assert command == "pip install . && cjllm rank examples/essays --out results"
    rank = subprocess.run(
        ["bash", "-c", command],
        cwd=clone,
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert rank.returncode == 0, rank.stdout[-4000:] + rank.stderr[-4000:]

    # it ran the installed package, not the source tree of the test run
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import cjllm; print(cjllm.__file__)"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in where.stdout

    results = clone / "results"
    with (results / "ranking.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18 and list(rows[0])[:4] == ["rank", "essay_id", "score", "se"]
    summary = json.loads((results / "ranking.json").read_text(encoding="utf-8"))["summary"]
    assert summary["judge"] == "mock (simulated judge)"
    assert summary["status"] == "completed"
    assert 0 < summary["provider_calls"] < summary["comparisons_made"]
    page = (results / "report.html").read_text(encoding="utf-8")
    assert 'id="score-plot"' in page and page.count('<span class="dot"') == 18
    assert (results / "comparisons.csv").exists()
    assert "Judge: mock (simulated judge)" in rank.stdout
