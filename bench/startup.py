"""How fast the command line answers when it need not run anything (run: python bench/startup.py).

Each case is a fresh ``python`` process, as a user's shell starts one: ``--help``,
``--version``, a missing essays folder, a real provider without an API key, and for scale
a bare interpreter and a process that imports everything a ranking run needs
(``cjllm.rank``). The cases run interleaved, ``--rounds`` times, so a busy machine slows
them alike; medians in seconds, and each as a ratio of the full import.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "essays"
CLI = [sys.executable, "-c", "from cjllm.cli import app; app(prog_name='cjllm')"]


def cases(home: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cjllm --help": [*CLI, "--help"],
        "cjllm --version": [*CLI, "--version"],
        "rank: missing folder": [*CLI, "rank", "/no/such/folder"],
        "rank: no API key": [*CLI, "rank", str(EXAMPLES), "--provider", "anthropic"],
        "import cjllm.rank (all of it)": [sys.executable, "-c", "import cjllm.rank"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
        env["HOME"] = home
        runs = cases(home)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, argv in runs.items():
                started = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=False)
                times[name].append(time.perf_counter() - started)
    full = statistics.median(times["import cjllm.rank (all of it)"])
    print(f"{'case':32} {'median s':>9} {'max s':>7} {'/ full import':>14}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.3f} {max(values):7.3f} {median / full:14.2f}")


if __name__ == "__main__":
    main()
