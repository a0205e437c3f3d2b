"""Should the published scores use the lapse model? Coverage with and without ε in the posterior.

Run: python bench/lapse_in_scores.py [--reps 12] [--n 40] [--k 10] [--tau-scales 1.5,3]

Random pairs (``k`` comparisons per essay), abilities N(0, 1.5²) logits, a logistic judge that
is clean or flips 20% of its decisions (lapse rate ε = 0.4). Each batch is sampled twice by
``cj.posterior.sample_posterior``: with ε = 0 (what the published scores use) and with ε
sampled jointly (prior: half on 0, half uniform on 0.05–0.5), once per prior scale of τ
(``--tau-scales``; the published fit uses ``posterior.TAU_SCALE``). Per judge, τ prior and
model (ε = 0, ε sampled, and the one the final fit chooses: ε sampled when P(ε > 0) > ½):
the share of 95% intervals holding the truth (on the noise-free scale), reliability − actual
r², the posterior median τ (truth 1.5) and ε, and the mean P(ε > 0). docs/judgement.md
explains what the figures decided.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small solves: threads only contend

import numpy as np

from cjllm.cj.population import fit_population
from cjllm.cj.posterior import sample_posterior

Z95 = 1.959963984540054


def batch(n: int, k: int, flip: float, rep: int, stream: int = 7) -> tuple[np.ndarray, ...]:
    """Truth and ``n·k/2`` random comparisons judged by a logistic judge that flips a share
    ``flip`` of its decisions (``stream`` keeps different benches' draws apart)."""
    rng = np.random.default_rng([rep, n, k, stream])
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
    parser.add_argument("--tau-scales", default="1.5,3")
    args = parser.parse_args()
    scales = [float(x) for x in args.tau_scales.split(",")]
    print(f"{args.reps} batches each, n = {args.n}, {args.k} random comparisons per essay")
    print("| judge | τ prior scale | ε in the scores | 95% coverage | reliability − r² | τ (1.5) "
          "| ε | P(ε > 0) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for judge, flip in (("clean", 0.0), ("flip 20%", 0.2)):
        for scale in scales:
            rows: dict[str, list[tuple[float, ...]]] = {"0": [], "sampled": [], "chosen": []}
            for rep in range(args.reps):
                truth, first, second, won = batch(args.n, args.k, flip, rep)
                start = fit_population(args.n, first, second, won, order_prior=0.1)
                centred = truth - truth.mean()
                runs = []
                for lapse in (False, True):
                    post = sample_posterior(
                        args.n, first, second, won, order_prior=0.1,
                        start_theta=np.asarray(start.theta),
                        start_order=start.fit.order_effect or 0.0, start_tau=start.tau or 1.0,
                        seed=[rep], lapse=lapse, tau_scale=scale,
                    )  # fmt: skip
                    cover = float(np.mean(np.abs(post.theta - centred) <= Z95 * post.se))
                    r2 = float(np.corrcoef(post.theta, truth)[0, 1] ** 2)
                    runs.append((cover, post.reliability - r2, post.tau, post.lapse))
                probability = post.lapse_probability
                rows["0"].append((*runs[0], probability))
                rows["sampled"].append((*runs[1], probability))
                rows["chosen"].append((*runs[probability > 0.5], probability))
            for used, values in rows.items():
                c, g, t, e, p = np.mean(values, axis=0)
                print(f"| {judge} | {scale:g} | {used} | {c:.3f} | {g:+.3f} | {t:.2f} | {e:.2f} "
                      f"| {p:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
