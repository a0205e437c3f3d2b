"""What Python's garbage collector costs an embedded ``cjllm rank`` job, per process.

Run: python bench/collector.py [--essays 10000] [--pairs 2] [--baseline OLD/src]

Runs ``cjllm rank`` on ``--essays`` simulated essays (the zero-latency mock, 10 comparisons
per essay, the provider's worker in a child process) with a ``sitecustomize`` module on
``PYTHONPATH`` that times every collection (``gc.callbacks``) in every Python process of the
job and writes, at exit, the collections and seconds per generation and the thresholds in
force. With ``--baseline DIR`` (e.g. ``git archive <commit> src | tar -x -C /tmp/old``) the
baseline's ``src`` and this checkout's run in turn, ``--pairs`` times. Printed per run for
the rank process and the worker's (by pid; processes with ≤ 10 collections left out): the
thresholds, collections and seconds of generations 0, 1 and 2, and the job's seconds
(``run.json`` to ``ranking.json``'s ``finished_at``, as ``bench/throughput.py``).
Seconds of collection are CPU the process spends with every thread stopped; on a shared
machine they stretch with the load like everything else: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from rate_limits import CJLLM, write_essays

RECORDER = """
import atexit, collections, gc, json, os, sys, time
_seconds, _count, _began = collections.Counter(), collections.Counter(), [0.0]
def _timed(phase, info):
    if phase == "start":
        _began[0] = time.perf_counter()
    else:
        _seconds[info["generation"]] += time.perf_counter() - _began[0]
        _count[info["generation"]] += 1
gc.callbacks.append(_timed)
def _write():
    record = {"pid": os.getpid(), "argv": " ".join(sys.argv)[:80], "thresholds": gc.get_threshold(),
              "count": dict(_count), "seconds": dict(_seconds)}
    with open(os.path.join(os.environ["CJLLM_GC_RECORDS"], f"{os.getpid()}.json"), "w") as f:
        json.dump(record, f)
atexit.register(_write)
"""


def run_once(essays: Path, src: Path | None, work: Path) -> tuple[float, list[dict[str, Any]]]:
    records, out = work / "records", work / "out"
    records.mkdir()
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORDER, encoding="utf-8")
    path = [str(site), *([str(src)] if src is not None else [])]
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
        "PYTHONPATH": os.pathsep.join(path),
        "CJLLM_GC_RECORDS": str(records),
        "CJLLM_EMBEDDED_WORKER": "child_process",
        "CJLLM_TARGET_RELIABILITY": "0.9999",  # spend the whole budget
    }
    args = [*CJLLM, "rank", str(essays), "--out", str(out), "--provider", "mock",
            "--comparisons-per-essay", "10"]  # fmt: skip
    subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    started = json.loads((out / "run.json").read_text(encoding="utf-8"))["started_at"]
    seconds = (
        datetime.fromisoformat(summary["finished_at"]) - datetime.fromisoformat(started)
    ).total_seconds()
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(records.glob("*.json"))]
    found.sort(key=lambda r: int(r["pid"]))
    return seconds, [r for r in found if sum(r["count"].values()) > 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--essays", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--baseline", type=Path, help="import the package from DIR/.. first")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent / "src"
    trees = [("baseline", args.baseline), ("this", here)] if args.baseline else [("this", here)]
    with tempfile.TemporaryDirectory(prefix="cjllm-bench-gc-") as tmp:
        essays = Path(tmp) / "essays"
        write_essays(essays, args.essays, seed=args.essays)
        print("| code | job s | process | thresholds | collections (gen 0/1/2) | seconds (0/1/2) |")
        print("|---|---|---|---|---|---|")
        for k in range(args.pairs):
            for name, src in trees:
                work = Path(tmp) / f"{name}-{k}"
                work.mkdir()
                seconds, records = run_once(essays, src, work)
                # by pid: the rank process first, then its children (the worker, the rest)
                for role, r in zip(("rank", "worker"), records, strict=False):
                    count = [r["count"].get(str(g), 0) for g in range(3)]
                    spent = [r["seconds"].get(str(g), 0.0) for g in range(3)]
                    print(
                        f"| {name} | {seconds:.1f} | {role} | {tuple(r['thresholds'])} "
                        f"| {'/'.join(map(str, count))} | "
                        f"{'/'.join(f'{s:.2f}' for s in spent)} ({sum(spent):.2f}) |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
