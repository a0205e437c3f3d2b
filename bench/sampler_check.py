"""Does the published sampler sample the same posterior as a long run of the plain one?

Run: python bench/sampler_check.py [--reps 6] [--n 40] [--k 10] [--long 12000]

Random pairs (``k`` comparisons per essay), abilities N(0, 1.5²), a logistic judge that is
clean or flips 20% of its decisions. Each batch is sampled by ``cj.posterior.sample_posterior``
three ways, with ε = 0 and with ε sampled:

- ``reference``: the plain Gibbs sampler (no scale moves) run ``--long`` draws after 150
  sweeps of burn-in — slow, but as close to the exact posterior as this bench gets;
- ``plain 600``: the plain sampler with the settings the final fit used before the scale
  moves (150 + 600 sweeps);
- ``published``: the sampler as the final fit runs it now (defaults).

Per judge and model: the mean over essays of |score − reference score| / reference SD, the
mean SD relative to the reference SD, the share of 95% intervals covering the truth, the
effective sample size of the SDs (median over essays, from one chain of 4,000 kept sweeps,
per 1,000 sweeps) and the CPU ms of one run.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small solves: threads only contend

import time

import numpy as np
from lapse_in_scores import Z95, batch  # bench/lapse_in_scores.py: the same simulated batches

from cjllm.cj.population import fit_population
from cjllm.cj.posterior import RESCALES, Posterior, sample_chain, sample_posterior


def effective_size(series: np.ndarray) -> float:
    """Effective sample size of one chain (Geyer's initial positive sequence)."""
    x = series - series.mean()
    n = x.size
    if not x.var() > 0.0:
        return float(n)
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n] / (x.var() * n)
    total = 0.0
    for lag in range(1, n - 1, 2):
        pair = acf[lag] + acf[lag + 1]
        if pair < 0.0:
            break
        total += pair
    return n / (1.0 + 2.0 * total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--long", type=int, default=12000)
    args = parser.parse_args()
    print(f"{args.reps} batches each, n = {args.n}, {args.k} random comparisons per essay; "
          f"reference: the plain sampler, {args.long} draws")  # fmt: skip
    print("| judge | ε | sampler | |Δ score| / SD | SD / reference SD | 95% coverage "
          "| ESS of the SDs per 1,000 sweeps | CPU ms a run |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    samplers = {
        "reference": {"draws": args.long, "burn_in": 150, "rescales": 0},
        "plain 600": {"draws": 600, "burn_in": 150, "rescales": 0},
        "published": {},
    }
    for judge, flip in (("clean", 0.0), ("flip 20%", 0.2)):
        for lapse in (False, True):
            rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in samplers}
            for rep in range(args.reps):
                truth, first, second, won = batch(args.n, args.k, flip, rep, stream=9)
                start = fit_population(args.n, first, second, won, order_prior=0.1)
                common = {
                    "order_prior": 0.1, "start_theta": np.asarray(start.theta),
                    "start_order": start.fit.order_effect or 0.0, "start_tau": start.tau or 1.0,
                    "lapse": lapse,
                }  # fmt: skip
                posts: dict[str, tuple[Posterior, float]] = {}
                for name, settings in samplers.items():
                    began = time.process_time()
                    post = sample_posterior(
                        args.n, first, second, won, seed=[rep, 1], **common, **settings
                    )
                    posts[name] = post, 1000.0 * (time.process_time() - began)
                reference = posts["reference"][0]
                centred = truth - truth.mean()
                for name, (post, ms) in posts.items():
                    shift = float(np.mean(np.abs(post.theta - reference.theta) / reference.se))
                    ratio = float(np.mean(post.se / reference.se))
                    cover = float(np.mean(np.abs(post.theta - centred) <= Z95 * post.se))
                    rows[name].append((shift, ratio, cover, ms))
                if rep == 0:  # mixing: one long chain per sampler kind
                    for name, rescales in (("plain 600", 0), ("published", RESCALES[lapse])):
                        kept, _ = sample_chain(
                            args.n, first, second, won, seed=[rep, 2], draws=4000, burn_in=150,
                            tau_scale=3.0, rescales=rescales, **common,
                        )  # fmt: skip
                        squares = (kept - kept.mean(axis=0)) ** 2
                        ess = np.median([effective_size(squares[:, i]) for i in range(args.n)])
                        rows[name + " ess"] = [(ess / 4000 * 1000,)]
            for name in samplers:
                shift, ratio, cover, ms = np.mean(rows[name], axis=0)
                ess_row = rows.get(name + " ess")
                ess_text = f"{ess_row[0][0]:.0f}" if ess_row else "—"
                model = "sampled" if lapse else "0"
                print(f"| {judge} | {model} | {name} | {shift:.3f} | {ratio:.3f} | {cover:.3f} "
                      f"| {ess_text} | {ms:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
