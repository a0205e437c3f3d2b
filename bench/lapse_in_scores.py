"""Should the published scores use the lapse model? Coverage with and without ε in the posterior.

Run: python bench/lapse_in_scores.py [--reps 12] [--n 40] [--k 10]

Random pairs (``k`` comparisons per essay), abilities N(0, 1.5²) logits, a logistic judge that
is clean or flips 20% of its decisions (lapse rate ε = 0.4). Each batch is sampled twice by
``cj.posterior.sample_posterior``: with ε = 0 (what the published scores use) and with ε
sampled jointly (prior: half on 0, half uniform on 0.05–0.5). Per judge and model: the share
of 95% intervals holding the truth (on the noise-free scale), reliability − actual r², the
posterior median τ (truth 1.5) and ε. docs/judgement.md explains what the figures decided.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small solves: threads only contend

import numpy as np

from cjllm.cj.population import fit_population
from cjllm.cj.posterior import sample_posterior

Z95 = 1.959963984540054


def batch(n: int, k: int, flip: float, rep: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng([rep, n, k, 7])
    truth = rng.normal(0.0, 1.5, n)
    m = n * k // 2
    first = rng.integers(0, n, m)
    second = (first + rng.integers(1, n, m)) % n
    won = rng.random(m) < 1.0 / (1.0 + np.exp(truth[second] - truth[first]))
    return truth, first, second, np.where(rng.random(m) < flip, ~won, won)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    print(f"{args.reps} batches each, n = {args.n}, {args.k} random comparisons per essay")
    print("| judge | ε in the scores | 95% coverage | reliability − r² | τ (1.5) | ε |")
    print("|---|---|---|---|---|---|")
    for judge, flip in (("clean", 0.0), ("flip 20%", 0.2)):
        for lapse in (False, True):
            rows = []
            for rep in range(args.reps):
                truth, first, second, won = batch(args.n, args.k, flip, rep)
                start = fit_population(args.n, first, second, won, order_prior=0.1)
                post = sample_posterior(
                    args.n, first, second, won, order_prior=0.1,
                    start_theta=np.asarray(start.theta), start_order=start.fit.order_effect or 0.0,
                    start_tau=start.tau or 1.0, seed=[rep], lapse=lapse,
                )  # fmt: skip
                centred = truth - truth.mean()
                cover = np.mean(np.abs(post.theta - centred) <= Z95 * post.se)
                r2 = np.corrcoef(post.theta, truth)[0, 1] ** 2
                rows.append((cover, post.reliability - r2, post.tau, post.lapse))
            c, g, t, e = np.mean(rows, axis=0)
            used = "sampled" if lapse else "0"
            print(f"| {judge} | {used} | {c:.3f} | {g:+.3f} | {t:.2f} | {e:.2f} |")


if __name__ == "__main__":
    main()
