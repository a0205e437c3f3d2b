"""Grouped rounds (the pool layout's planner) against the current planner, at the same budget.

Run: python bench/grouped_rounds.py

For each seed: true abilities N(0, 2²) logits, a logistic judge, rounds of 50 comparisons
planned by ``pairing.plan_round`` and, on the same truth and judge seeds, by
``groups.plan_groups`` (groups of k, four comparisons per essay per group), MAP refit
(prior 0.2) after every round. Prints the mean Spearman ρ of the fitted scores against the
truth for both, and the paired difference with its standard error, from one run.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from cjllm.cj.groups import plan_groups
from cjllm.cj.pairing import plan_round
from cjllm.cj.scoring import fit_bradley_terry


def rho(grouped: bool, seed: int, n: int, rounds: int, k: int) -> float:
    truth = np.random.default_rng(seed).normal(0.0, 2.0, n)
    judge, planner = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    first: list[int] = []
    second: list[int] = []
    won: list[bool] = []
    theta = se = None
    for _ in range(rounds):
        if grouped:
            pairs = [
                p
                for g in plan_groups(n, first, second, theta, se, 50, planner, group_size=k)
                for p in g
            ]
        else:
            pairs = plan_round(n, first, second, theta, se, 50, planner)
        for a, b in pairs:
            first.append(a)
            second.append(b)
            won.append(bool(judge.random() < 1.0 / (1.0 + np.exp(truth[b] - truth[a]))))
        fit = fit_bradley_terry(n, first, second, won, prior=0.2)
        theta, se = fit.theta, fit.se
    return float(spearmanr(fit.theta, truth)[0])


def main(args: argparse.Namespace) -> None:
    print(f"{args.essays} essays, {args.rounds} rounds of 50 comparisons, {args.seeds} seeds")
    print(f"{'planner':<22}{'Spearman ρ':>12}{'paired diff':>14}")
    current = np.array([rho(False, s, args.essays, args.rounds, 0) for s in range(args.seeds)])
    print(f"{'plan_round':<22}{current.mean():>12.4f}")
    for k in args.k:
        grouped = np.array([rho(True, s, args.essays, args.rounds, k) for s in range(args.seeds)])
        diff = grouped - current
        se = diff.std(ddof=1) / np.sqrt(args.seeds)
        print(f"{f'plan_groups k={k}':<22}{grouped.mean():>12.4f}{diff.mean():>+9.4f} ± {se:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--essays", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of 50 comparisons")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--k", type=int, nargs="+", default=[10], help="group sizes")
    main(parser.parse_args())
