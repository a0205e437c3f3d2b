"""Above 1,000 essays: interval coverage and reliability − actual r², before and after a change.

Run: python bench/large_batches.py --baseline OLD/src [--n 1500,2000,10000]
     [--judges clean,flip] [--reps 4] [--jobs 2] [--fit-sizes 10000:50000,100000:1000000]

Each batch is ``bench/judgement.py``'s ``run_batch`` (the service's planning, round fits,
stopping rules and final fit, with a judge of known truth, abilities N(0, 1.5²), 10
comparisons per essay, adaptive pairing): once with the package imported from ``--baseline``
(e.g. ``git archive main src | tar -x -C /tmp/old``) and once from this checkout, the same
essays and judge draws for both, each in its own process, side by side. Printed per
condition: the mean 95% coverage, reported reliability, actual r², reliability − r², the
median Spearman ρ with the truth and the CPU seconds of a batch (fits, plans; no provider),
baseline then this checkout, and this checkout's batches scored with the lapse model, with
the mean P(ε ≥ 0.2). Targets (issue 11): coverage 0.92–0.97, |reliability − r²| ≤ 0.05.

``--fit-sizes N:M,…`` instead: the cost of one round fit (``population.fit_population``, no
warm start, as the service calls it) on N essays and M random comparisons (logistic judge,
abilities N(0, 1.5²), +0.2 for Essay A), CPU seconds of a fresh process, baseline and this
checkout alternately, three times each (the median printed).
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


def fit_child(n: int, m: int) -> None:
    import numpy as np

    from cjllm.cj.population import fit_population

    rng = np.random.default_rng([n, m])
    truth = rng.normal(0.0, 1.5, n)
    first = rng.integers(0, n, m)
    second = (first + rng.integers(1, n, m)) % n
    won = rng.random(m) < 1.0 / (1.0 + np.exp(-(truth[first] - truth[second] + 0.2)))
    started = time.process_time()
    fit = fit_population(n, first, second, won, order_prior=0.1)
    cpu = time.process_time() - started
    r2 = float(np.corrcoef(fit.theta, truth)[0, 1] ** 2)
    print(json.dumps({"cpu": cpu, "tau": fit.tau or float("nan"), "gap": fit.reliability - r2}))


def fit_section(baseline: str, sizes: str) -> None:
    print(f"{'essays':>7} {'comparisons':>11} | {'CPU s old':>9} {'new':>6} {'new/old':>7} | "
          f"{'τ new':>6} | {'rel−r² old':>10} {'new':>7}", flush=True)  # fmt: skip
    for size in sizes.split(","):
        n, m = (int(x) for x in size.split(":"))
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for _ in range(3):
            for which, src in (("old", baseline), ("new", str(SRC))):
                runs[which].append(run(src, n, "fit", m))
        old, new = (median(r["cpu"] for r in runs[k]) for k in ("old", "new"))
        print(
            f"{n:>7} {m:>11} | {old:>9.2f} {new:>6.2f} {new / old:>7.1f} | "
            f"{runs['new'][0]['tau']:>6.3f} | {runs['old'][0]['gap']:>+10.3f} "
            f"{runs['new'][0]['gap']:>+7.3f}",
            flush=True,
        )


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
    parser.add_argument("--fit-sizes")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        n, judge, rep = args.child.split(",")
        if judge == "fit":
            fit_child(int(n), int(rep))
        else:
            child(int(n), judge, int(rep))
        return
    if not args.baseline:
        parser.error("--baseline is required")
    if args.fit_sizes:
        fit_section(args.baseline, args.fit_sizes)
        return
    print(
        f"{'n':>6} {'judge':>5} {'reps':>4} | {'coverage old':>12} {'new':>6} | "
        f"{'rel old':>7} {'new':>6} | {'r² old':>6} {'new':>6} | {'rel−r² old':>10} {'new':>7} | "
        f"{'ρ old':>6} {'new':>6} | {'CPU s old':>9} {'new':>6} | {'lapse-scored new':>16}",
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
                    f"{m(old, 'cpu'):>9.1f} {m(new, 'cpu'):>6.1f} | "
                    f"{sum(r['scored_with_lapse'] for r in new):>5.0f} of {args.reps:<3} "
                    f"P {m(new, 'lapse_probability'):.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
