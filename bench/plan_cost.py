"""What planning one round costs: ``pairing.plan_round`` at 1,000 and 10,000 essays.

Run: python bench/plan_cost.py [--sizes 1000,10000] [--rounds 1,5,9] [--times 3]
[--repeat 3] [--covariance] [--fitted] [--passes 1] [--baseline OLD/src]

Round r of a 10-per-essay batch of n essays (n/2 pairs a round, so essays have had r − 1
comparisons; ``--passes 2``: n pairs a round, as the service plans above 1,000 essays): the
history is (r − 1) × passes random perfect matchings, each pair's Essay A the one
with fewer A's; round 1 is planned as the service plans it with nothing fitted (no scores,
every partner random), later rounds with scores N(0, 1.5²), SEs U(0.2, 1) (with
``--fitted``: the history judged by a logistic judge over those scores and fitted, as the
service's round fit does, so the scores are shrunk and the SEs nearly equal — what the planner
gets in a balanced design) and the service's default random share 0.1 (no covariance: above
``uncertainty.EXACT_LIMIT`` essays the service passes none; ``--covariance``: with a random
one, and the lapse probes' share 0.1, as the service plans up to that limit).

Printed per size and round: CPU ms of one ``plan_round`` call (this process's CPU time: the
median over ``--times`` child processes of the least of ``--repeat`` calls in each), and with
``--baseline DIR`` the same calls with the package imported from DIR (e.g. ``git archive
<commit> src | tar -x -C /tmp/old``), alternating old and new, the ratio old/new, and
whether both planned the same pairs (their sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np


def history(n: int, rounds: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``rounds`` random perfect matchings, Essay A the item with fewer A's (ties: random)."""
    balance = np.zeros(n, dtype=np.int64)
    first, second = [], []
    for _ in range(rounds):
        perm = rng.permutation(n)
        a, b = perm[0 : n - 1 : 2], perm[1::2]
        swap = (balance[a] > balance[b]) | ((balance[a] == balance[b]) & (rng.random(a.size) < 0.5))
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        balance[a] += 1
        balance[b] -= 1
        first.append(a)
        second.append(b)
    empty = np.zeros(0, dtype=np.intp)
    return np.concatenate(first or [empty]), np.concatenate(second or [empty])


def measure(
    n: int,
    round_number: int,
    seed: int,
    repeat: int,
    covariance: bool = False,
    fitted: bool = False,
    passes: int = 1,
) -> dict[str, float | str]:
    """``plan_round`` for round ``round_number`` of ``n`` essays: the least CPU ms of
    ``repeat`` calls."""
    from cjllm.cj.pairing import plan_round

    rng = np.random.default_rng([seed, n, round_number])
    first, second = history(n, passes * (round_number - 1), rng)
    theta, se = rng.normal(0.0, 1.5, n), rng.uniform(0.2, 1.0, n)
    if fitted and round_number > 1:  # the history judged by a logistic judge over theta, and fitted
        from cjllm.cj.scoring import fit_bradley_terry

        won = rng.random(first.size) < 1.0 / (1.0 + np.exp(theta[second] - theta[first]))
        fit = fit_bradley_terry(n, first, second, won, prior=1.0 / 1.5**2)
        theta, se = np.asarray(fit.theta), np.asarray(fit.se)
    known = round_number > 1
    cov = None
    if covariance and known:  # a posterior covariance with correlated errors
        factor = rng.normal(size=(n, 20))
        cov = 0.05 * factor @ factor.T / 20 + np.diag(se**2)
    times, plans = [], set()
    for _ in range(repeat):  # the fastest of a few calls: other load on the machine counts less
        start = time.process_time()
        plan = plan_round(
            n, first, second, theta if known else None, se if known else None, passes * (n // 2),
            np.random.default_rng([seed, round_number]), random_fraction=0.1 if known else 1.0,
            covariance=cov, probe_fraction=0.1,
        )  # fmt: skip
        times.append(1000.0 * (time.process_time() - start))
        plans.add(hashlib.sha256(json.dumps(plan).encode()).hexdigest())
    return {"ms": min(times), "sha256": plans.pop() if len(plans) == 1 else "differs"}


def run_elsewhere(
    src: str,
    n: int,
    round_number: int,
    seed: int,
    repeat: int,
    covariance: bool,
    fitted: bool,
    passes: int,
) -> dict[str, float | str]:
    """:func:`measure` in a child process importing the package from ``src``."""
    env = {**os.environ, "PYTHONPATH": src}
    args = ["--one", str(n), "--round", str(round_number), "--seed", str(seed)]
    args += ["--repeat", str(repeat), *(["--covariance"] if covariance else [])]
    args += [*(["--fitted"] if fitted else []), "--passes", str(passes)]
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
    )
    result: dict[str, float | str] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", default="1,5,9")
    parser.add_argument("--times", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="calls per child: the fastest")
    parser.add_argument("--covariance", action="store_true", help="rounds 2 on: with one")
    parser.add_argument(
        "--fitted",
        action="store_true",
        help="scores and SEs of a fit of the history (judged by a logistic judge)",
    )
    parser.add_argument("--passes", type=int, default=1, help="n/2 pairs a pass, a round")
    parser.add_argument("--baseline", help="import the package from this directory for 'old'")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = measure(
            args.one, args.round, args.seed, args.repeat, args.covariance, args.fitted, args.passes
        )
        print(json.dumps(figures))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    old_cols = " old ms | ×faster | same pairs |" if args.baseline else ""
    print(f"| essays | round | pairs | ms per round |{old_cols}")
    print("|---" * (7 if args.baseline else 4) + "|")
    for n in (int(v) for v in args.sizes.split(",")):
        for r in (int(v) for v in args.rounds.split(",")):
            new_runs, old_runs = [], []

            def run(src: str, n: int = n, r: int = r) -> dict[str, float | str]:
                return run_elsewhere(
                    src, n, r, args.seed, args.repeat, args.covariance, args.fitted, args.passes
                )

            for _ in range(args.times):
                if args.baseline:
                    old_runs.append(run(args.baseline))
                new_runs.append(run(here))
            new_ms = float(np.median([float(v["ms"]) for v in new_runs]))
            row = f"| {n} | {r} | {args.passes * (n // 2)} | {new_ms:.0f} |"
            if old_runs:
                old_ms = float(np.median([float(v["ms"]) for v in old_runs]))
                same = {v["sha256"] for v in old_runs + new_runs}
                row += (
                    f" {old_ms:.0f} | {old_ms / new_ms:.1f} | {'yes' if len(same) == 1 else 'NO'} |"
                )
            print(row, flush=True)


if __name__ == "__main__":
    main()
