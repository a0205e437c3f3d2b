"""The command line's fast paths load nothing heavy: ``--help``, ``--version`` and every
input, option or credential error are answered before the SDKs, the contracts, numpy,
SQLAlchemy or the services are imported (typer itself brings in pydantic to convert paths),
so they come back in a fraction of a second. The figures are in docs/performance.md; tests
never time them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import EXAMPLES, REPO

HEAVY = (
    "anthropic",
    "openai",
    "numpy",
    "scipy",
    "sqlalchemy",
    "fastapi",
    "httpx",
    "alembic",
    "redis",
    "aiokafka",
    "uvicorn",
    "cjllm.contracts",
    "cjllm.rank",
    "cjllm.embedded",
    "cjllm.settings",
)

# run the CLI in-process, then report the exit code and which heavy modules were imported
PROBE = f"""
import json, sys
from cjllm.cli import app
try:
    app(args=sys.argv[1:], prog_name="cjllm")
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
heavy = {HEAVY!r}
loaded = sorted(m for m in heavy if m in sys.modules)
print("\\nPROBE " + json.dumps({{"code": code, "loaded": loaded}}))
"""


def probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    line = proc.stdout.rstrip().splitlines()[-1]
    assert line.startswith("PROBE "), proc.stdout + proc.stderr
    data = json.loads(line.removeprefix("PROBE "))
    return int(data["code"]), list(data["loaded"]), proc.stdout


def test_help_and_version_load_nothing_heavy() -> None:
    for args in (["--help"], ["rank", "--help"], ["--version"]):
        code, loaded, _ = probe(*args)
        assert code == 0 and loaded == [], (args, loaded)
    assert "serial_round" in probe("rank", "--help")[2]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no-such-folder"], "no such file or folder"),
        (["{one}"], "at least 2"),
        (["{examples}", "--budget", "0"], "--budget must be at least 1"),
        (["{examples}", "--budget", "16"], "fewer than the 17 (essays − 1)"),
        (["{examples}", "--strategy", "per_request", "--bundle-size", "3"], "--bundle-size"),
        (["{examples}", "--strategy", "async_batch"], "the mock judge has none"),
        (["{examples}", "--provider", "llama"], "choose mock, anthropic or openai"),
        (["{examples}", "--provider", "anthropic"], "ANTHROPIC_API_KEY"),
        (["{examples}", "--provider", "openai"], "OPENAI_API_KEY"),
    ],
)
def test_input_option_and_credential_errors_load_nothing_heavy(
    tmp_path: Path, args: list[str], says: str
) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("A lonely essay.", encoding="utf-8")
    argv = [a.format(one=one, examples=EXAMPLES) for a in args]
    code, loaded, out = probe(
        "rank", *argv, "--out", str(tmp_path / "out"), env={"HOME": str(tmp_path)}
    )
    assert code == 2, out
    assert says in " ".join(out.split()), out
    assert loaded == [], loaded
    assert not (tmp_path / "out").exists()
