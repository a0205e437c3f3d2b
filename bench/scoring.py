"""Bradley-Terry fit time for 2,000 items and 20,000 comparisons (run: python bench/scoring.py).

Every item is in exactly 20 comparisons (20 random perfect matchings), outcomes from a
logistic judge with a 0.2-logit first-position bias. Prints wall-clock seconds (best of 3)
for the whole fit, its Newton iterations and its standard-error step, and the Newton time
with dense Cholesky steps instead of sparse conjugate-gradient steps, all from one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from cjllm.cj import scoring

N_ITEMS, PER_ITEM, REPEATS = 2000, 20, 3


def best_of(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def data(sd: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, sd, N_ITEMS)
    pairs = np.concatenate([rng.permutation(N_ITEMS) for _ in range(PER_ITEM)]).reshape(-1, 2)
    first, second = pairs[:, 0], pairs[:, 1]
    won = rng.random(len(pairs)) < 1 / (1 + np.exp(truth[second] - truth[first] - 0.2))
    return first, second, won


def ml_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A data set on which maximum-likelihood estimates exist (no unbeaten/winless group)."""
    for seed in range(100):
        first, second, won = data(0.5, seed)
        try:
            scoring._check_ml_exists(N_ITEMS, first, second, won, True)
        except scoring.UnboundedEstimateError:
            continue
        return first, second, won
    raise RuntimeError("no data set with finite ML estimates found")


def bench_case(
    name: str, prior: float, first: np.ndarray, second: np.ndarray, won: np.ndarray
) -> None:
    total = best_of(
        lambda: scoring.fit_bradley_terry(
            N_ITEMS, first, second, won, prior=prior, order_effect=True
        )
    )
    problem = scoring._Problem(N_ITEMS, first, second, won, True, prior)
    z, n_iter, _ = scoring._newton(problem, 100, 1e-9)
    newton = best_of(lambda: scoring._newton(problem, 100, 1e-9))
    se = best_of(lambda: scoring._sum_to_zero_covariance(problem, z))
    limit = scoring._DENSE_LIMIT
    scoring._DENSE_LIMIT = 10**9
    dense = best_of(lambda: scoring._newton(problem, 100, 1e-9))
    scoring._DENSE_LIMIT = limit
    print(f"{name:<15}{total:>9.3f}{newton:>10.3f}{se:>8.3f}{n_iter:>7}{dense:>16.3f}")
    print(f"{'':<15}SE share of fit {se / total:.0%}; dense/sparse Newton {dense / newton:.1f}x")


def main() -> None:
    print(f"{N_ITEMS} items, {N_ITEMS * PER_ITEM // 2} comparisons, order effect fitted")
    print(f"{'fit':<15}{'total s':>9}{'Newton s':>10}{'SE s':>8}{'iters':>7}{'dense Newton s':>16}")
    bench_case("ML", 0.0, *ml_data())
    bench_case("MAP prior=0.1", 0.1, *data(1.0, 0))


if __name__ == "__main__":
    main()
