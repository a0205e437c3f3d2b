"""Above 1,000 essays: interval coverage and reliability − actual r², before and after a change.

Run: python bench/large_batches.py --baseline OLD/src [--n 1500,2000,10000]
     [--judges clean,flip] [--reps 4] [--jobs 2]

Each batch is ``bench/judgement.py``'s ``run_batch`` (the service's planning, round fits,
stopping rules and final fit, with a judge of known truth, abilities N(0, 1.5²), 10
comparisons per essay, adaptive pairing): once with the package imported from ``--baseline``
(e.g. ``git archive main src | tar -x -C /tmp/old``) and once from this checkout, the same
essays and judge draws for both, each in its own process, side by side. Printed per
condition: the mean 95% coverage, reported reliability, actual r², reliability − r², the
median Spearman ρ with the truth and the CPU seconds of a batch (fits, plans; no provider),
baseline then this checkout. Targets (issue 11): coverage 0.92–0.97, |reliability − r²| ≤ 0.05.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, median

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def child(n: int, judge: str, rep: int) -> None:
    sys.path.insert(0, str(HERE))
    import judgement  # bench/judgement.py: the batches

    started = time.process_time()
    figures = judgement.run_batch(judgement.Condition(n, 10, judge, "adaptive", 0.1), rep)
    figures["cpu"] = time.process_time() - started
    print(json.dumps(figures))


def run(src: str, n: int, judge: str, rep: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{n},{judge},{rep}"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=False)
    parser.add_argument("--n", default="1500,2000,10000")
    parser.add_argument("--judges", default="clean,flip")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        n, judge, rep = args.child.split(",")
        child(int(n), judge, int(rep))
        return
    if not args.baseline:
        parser.error("--baseline is required")
    print(
        f"{'n':>6} {'judge':>5} {'reps':>4} | {'coverage old':>12} {'new':>6} | "
        f"{'rel old':>7} {'new':>6} | {'r² old':>6} {'new':>6} | {'rel−r² old':>10} {'new':>7} | "
        f"{'ρ old':>6} {'new':>6} | {'CPU s old':>9} {'new':>6}",
        flush=True,
    )
    with ThreadPoolExecutor(args.jobs) as pool:
        for n in (int(x) for x in args.n.split(",")):
            for judge in args.judges.split(","):
                reps = range(args.reps)
                jobs = {
                    (rep, which): pool.submit(run, src, n, judge, rep)
                    for rep in reps
                    for which, src in (("old", args.baseline), ("new", str(SRC)))
                }
                old = [jobs[rep, "old"].result() for rep in reps]
                new = [jobs[rep, "new"].result() for rep in reps]

                def m(rows: list[dict[str, float]], key: str) -> float:
                    return mean(r[key] for r in rows)

                def gap(rows: list[dict[str, float]]) -> float:
                    return mean(r["reliability"] - r["r2"] for r in rows)

                print(
                    f"{n:>6} {judge:>5} {args.reps:>4} | "
                    f"{m(old, 'coverage'):>12.3f} {m(new, 'coverage'):>6.3f} | "
                    f"{m(old, 'reliability'):>7.3f} {m(new, 'reliability'):>6.3f} | "
                    f"{m(old, 'r2'):>6.3f} {m(new, 'r2'):>6.3f} | "
                    f"{gap(old):>+10.3f} {gap(new):>+7.3f} | "
                    f"{median(r['rho'] for r in old):>6.3f} "
                    f"{median(r['rho'] for r in new):>6.3f} | "
                    f"{m(old, 'cpu'):>9.1f} {m(new, 'cpu'):>6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
