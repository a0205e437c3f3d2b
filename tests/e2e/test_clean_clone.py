"""A clean clone, in a folder with nothing beside it, passes the fast subset of the suite.

The clone is of the committed repository; its tests import the clone's own source (not the
checkout this suite runs from), so anything that reads or links outside the project's tree
(a ``../shared`` folder, the path of this checkout) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import REPO


# the fast subset in a child pytest (about two minutes on a 2-core machine that others load)
# outgrows the suite's 300s hang guard; this one covers the timeouts of its steps
@pytest.mark.timeout(1200)
def test_a_clean_clone_passes_the_fast_subset_on_its_own(tmp_path: Path) -> None:
    clone = (
        tmp_path / "a-rather-long-folder-name-so-that-paths-wrap-in-an-80-column-terminal" / "cjllm"
    )
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["cjllm"]  # nothing beside it
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ["PYTHONPATH"] = str(clone / "src")  # the clone's code before the installed one
    environ.pop("COLUMNS", None)
    where = subprocess.run(
        [sys.executable, "-c", "import cjllm; print(cjllm.__file__)"],
        cwd=clone,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(clone)), where.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "smoke", "-p", "no:cacheprovider"],
        cwd=clone,
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
