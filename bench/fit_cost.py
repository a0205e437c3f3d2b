"""What the CJ service's fits cost: the per-round fit and the final (sampled) fit of one batch.

Run: python bench/fit_cost.py [--sizes 40,100,200,400] [--baseline OLD/src]

A batch of n essays is run to 10 comparisons per essay the way the service runs it — round
planning (``rounds.plan_next_round``), the round fit (``ranking.fit_outcomes``) after every
round, then the final fit (``ranking.final_fit``) — with a logistic judge over abilities
N(0, 1.5²) in place of the provider. Printed per size: rounds, the mean and the largest round
fit in ms, the final fit in ms (CPU time of this process, so other load on the machine
counts less), and what of it the job waits for: the round fits and plans, then the longer of
the final fit's two chains (the service runs the lapse chain in a helper process beside the
other, ``cj/chain_process.py``) — the statistics' part of a job's critical path, and the
comparisons a second a job could reach if everything else (requests, queue, judge,
callbacks) cost nothing. ``--baseline DIR``: the same batches measured, size by size
alternately, with the package imported from DIR (e.g. an older checkout's ``src``:
``git archive <commit> src | tar -x -C /tmp/old``), and the ratios old/new printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small solves: threads only contend

import numpy as np


class _Beside(Executor):
    """Runs what ``final_fit`` hands its helper process (the lapse chain) at once, here,
    and counts its CPU time."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        start = time.process_time()
        future.set_result(fn(*args, **kwargs))
        self.seconds += time.process_time() - start
        return future


def measure(n: int, seed: int) -> dict[str, float]:
    """One batch of ``n`` essays: its round fits and final fit, in CPU milliseconds."""
    from cjllm.cj import stopping
    from cjllm.cj.options import BatchOptions
    from cjllm.cj.ranking import final_fit, fit_outcomes
    from cjllm.cj.records import EssayRecord, PairOutcome
    from cjllm.cj.rounds import plan_next_round
    from cjllm.cj.tables import ComparisonStatus

    rng = np.random.default_rng([seed, n])
    truth = rng.normal(0.0, 1.5, n)
    essays = [EssayRecord(f"e{i:04d}", i, "", None) for i in range(n)]
    options = BatchOptions(comparisons_per_essay=10, target_reliability=2.0)
    outcomes: list[PairOutcome] = []
    fit = fit_outcomes(essays, outcomes, options)
    rounds: list[float] = []
    plans = 0.0
    number = 0
    while stopping.reason_to_stop(options, n, stopping.tally(outcomes), fit) is None:
        number += 1
        start = time.process_time()
        pairs = plan_next_round(f"fit-cost-{n}", number, options, essays, outcomes, fit)
        plans += time.process_time() - start
        if not pairs:
            break
        for p in pairs:
            a, b = int(p.essay_a_id[1:]), int(p.essay_b_id[1:])
            won = rng.random() < 1.0 / (1.0 + np.exp(truth[b] - truth[a]))
            done = ComparisonStatus.SUCCEEDED
            winner = "Essay A" if won else "Essay B"
            outcomes.append(
                PairOutcome(p.essay_a_id, p.essay_b_id, done, winner, p.attempt, number)
            )
        start = time.process_time()
        fit = fit_outcomes(essays, outcomes, options)
        rounds.append(time.process_time() - start)
    beside = _Beside()
    start = time.process_time()
    final_fit(essays, outcomes, options, fit=fit, executor=beside)
    final = time.process_time() - start
    critical = sum(rounds) + plans + max(final - beside.seconds, beside.seconds)
    return {
        "rounds": len(rounds),
        "comparisons": len(outcomes),
        "round_ms": 1000.0 * float(np.mean(rounds)),
        "round_max_ms": 1000.0 * float(np.max(rounds)),
        "final_ms": 1000.0 * final,
        "plans_ms": 1000.0 * plans,
        "lapse_chain_ms": 1000.0 * beside.seconds,
        "critical_s": critical,
    }


def run_elsewhere(src: str, n: int, seed: int) -> dict[str, float]:
    """:func:`measure` in a child process importing the package from ``src``."""
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(n), "--seed", str(seed)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="40,100,200,400")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", help="import the package from this directory for 'old'")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seed)))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    print("| essays | comparisons | rounds | round fit ms (mean / max) | final fit ms |"
          " plans ms (all rounds) | lapse chain ms | statistics on the critical path s |"
          " comparisons/s at most |"
          + (" old round ms | old final ms | round ×faster | final ×faster |" if args.baseline
             else ""))  # fmt: skip
    print("|---" * (13 if args.baseline else 9) + "|")
    for n in (int(v) for v in args.sizes.split(",")):
        old = run_elsewhere(args.baseline, n, args.seed) if args.baseline else None
        new = run_elsewhere(here, n, args.seed)
        row = (f"| {n} | {new['comparisons']:.0f} | {new['rounds']:.0f} | {new['round_ms']:.1f}"
               f" / {new['round_max_ms']:.1f} | {new['final_ms']:.0f} | {new['plans_ms']:.0f} |"
               f" {new['lapse_chain_ms']:.0f} | {new['critical_s']:.2f} |"
               f" {new['comparisons'] / new['critical_s']:.0f} |")  # fmt: skip
        if old is not None:
            row += (f" {old['round_ms']:.1f} | {old['final_ms']:.0f} | "
                    f"{old['round_ms'] / new['round_ms']:.1f} | "
                    f"{old['final_ms'] / new['final_ms']:.1f} |")  # fmt: skip
        print(row, flush=True)


if __name__ == "__main__":
    main()
