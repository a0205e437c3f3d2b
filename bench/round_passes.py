"""Large batches: one pass a round (every essay once) against two (every essay twice).

Run: python bench/round_passes.py [--n 2000,10000] [--k 10] [--judges clean,flip]
     [--reps 4] [--jobs 2]

Above ``rounds.LARGE_BATCH`` essays a round gives every essay ``rounds.LARGE_ROUND_PASSES``
comparisons. Fewer rounds mean fewer refits and plans while the provider waits, and fewer
drains of a round's last bundles; the price is adaptivity (the second pass is planned from
the same fit as the first). This runs the same batches both ways — ``bench/judgement.py``'s
``run_batch``: the service's planning, round fits, stopping rules and final fit, with a judge
of known truth, the same essays and judge draws for both (common random numbers) — and
prints, per condition, the median Spearman ρ with the truth, the paired difference
(two passes − one) with its standard error, the 95% coverage, reliability − actual r², the
rounds, and the CPU seconds of the batch's own work (fits and plans; no provider).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import mean, median, stdev

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judgement  # bench/judgement.py: the batches

from cjllm.cj import rounds


def _run(condition: judgement.Condition, rep: int, passes: int) -> dict[str, float]:
    rounds.LARGE_ROUND_PASSES = passes
    started = time.process_time()
    figures = judgement.run_batch(condition, rep)
    figures["cpu"] = time.process_time() - started
    figures["rounds"] = condition.k / passes
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2000,10000")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--judges", default="clean,flip")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--first-rep", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    print(f"rounds.LARGE_BATCH = {rounds.LARGE_BATCH}; passes compared: 1 and 2", flush=True)
    print(
        f"{'n':>6} {'judge':>6} {'reps':>4} | {'ρ 1 pass':>9} {'ρ 2':>7} {'Δρ (2−1)':>17} | "
        f"{'coverage 1':>10} {'2':>6} | {'rel−r² 1':>8} {'2':>7} | {'CPU s 1':>7} {'2':>6}",
        flush=True,
    )
    with ProcessPoolExecutor(args.jobs) as pool:
        for n in (int(x) for x in args.n.split(",")):
            for judge in args.judges.split(","):
                condition = judgement.Condition(n, args.k, judge, "adaptive", 0.1)
                reps = range(args.first_rep, args.first_rep + args.reps)
                jobs = {
                    (rep, passes): pool.submit(_run, condition, rep, passes)
                    for rep in reps
                    for passes in (1, 2)
                }
                one = [jobs[rep, 1].result() for rep in reps]
                two = [jobs[rep, 2].result() for rep in reps]
                diff = [b["rho"] - a["rho"] for a, b in zip(one, two, strict=True)]
                se = stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")

                def m(rows: list[dict[str, float]], key: str) -> float:
                    return mean(r[key] for r in rows)

                def gap(rows: list[dict[str, float]]) -> float:
                    return mean(r["reliability"] - r["r2"] for r in rows)

                print(
                    f"{n:>6} {judge:>6} {len(diff):>4} | "
                    f"{median(r['rho'] for r in one):>9.4f} {median(r['rho'] for r in two):>7.4f} "
                    f"{mean(diff):>+9.4f} ± {se:.4f} | "
                    f"{m(one, 'coverage'):>10.3f} {m(two, 'coverage'):>6.3f} | "
                    f"{gap(one):>+8.3f} {gap(two):>+7.3f} | "
                    f"{m(one, 'cpu'):>7.1f} {m(two, 'cpu'):>6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
