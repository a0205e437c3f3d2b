"""Reliability of a Bradley-Terry scale: under the fitted population prior, scale separation
and split-half.

Plain functions over numpy arrays, like :mod:`cjllm.cj.scoring`, whose fits they use.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cjllm.cj.scoring import RngLike, checked_comparisons, fit_bradley_terry

SPLIT_ITEMS = 20_000  # essays × splits beyond which split-half averages fewer splits


def population_reliability(se: npt.ArrayLike, population_sd: float) -> float:
    """Reliability under a fitted population prior θ ~ N(0, τ²): 1 − mean(se²)/τ².

    With posterior (shrunken) scores and posterior SEs, τ² = var(θ) splits into the variance
    the scores capture and the mean posterior variance, so this is the share of the true
    variance the scores capture: an estimate of the squared correlation of the scores with
    the true abilities. It stays honest under adaptive pairing, where the classical
    :func:`scale_separation_reliability` of maximum-likelihood scores is inflated. In [0, 1]
    when every se ≤ τ (always so for posterior SEs).
    """
    e = np.asarray(se, dtype=np.float64)
    if e.ndim != 1 or e.size == 0 or not population_sd > 0.0:
        raise ValueError(f"need 1-D se and population_sd > 0, got {e.shape}, {population_sd}")
    return float(1.0 - np.mean(e**2) / population_sd**2)


def scale_separation_reliability(theta: npt.ArrayLike, se: npt.ArrayLike) -> float:
    """Scale separation reliability (var(θ) − mean(se²)) / var(θ).

    var is the population variance (divisor n, ``np.var``): for sum-to-zero estimates with
    sum-to-zero SEs, E[mean θ̂²] = mean θ² + mean se², so this is the matching convention.
    The value can be negative when errors dominate; it is not clipped. Raises ``ValueError``
    when θ has zero variance or the shapes differ.
    """
    t, e = np.asarray(theta, dtype=np.float64), np.asarray(se, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"theta and se must be 1-D of equal length, got {t.shape}, {e.shape}")
    observed = float(np.var(t))
    if observed == 0.0:
        raise ValueError("theta has zero variance: reliability is undefined")
    return (observed - float(np.mean(e**2))) / observed


def split_half_reliability(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    prior: float,
    n_splits: int = 20,
    rng: RngLike = None,
    order_effect: bool = False,
) -> float:
    """Mean Spearman-Brown corrected split-half reliability over random splits.

    Each split shuffles the comparisons and halves them (the second half takes the odd one),
    fits the abilities of both halves (no standard errors) with
    ``fit_bradley_terry(..., prior=prior, order_effect=order_effect)``
    (``prior`` must be > 0: a half may be disconnected; an item absent from a half sits at the
    prior mean 0) and takes the Pearson correlation r of the two θ vectors. The mean r over the
    ``n_splits`` splits is corrected to full length with Spearman-Brown, 2r / (1 + r).
    Returns NaN when a half has constant θ or the mean r is −1 (tiny, degenerate batches),
    so callers can report "undefined" instead of failing. ``rng``: anything
    ``np.random.default_rng`` accepts.
    """
    f, s, y = checked_comparisons(n_items, first, second, first_won)
    if not (np.isfinite(prior) and prior > 0.0):
        raise ValueError(f"split-half fits need prior > 0, got {prior}")
    if n_splits < 1 or f.size < 2:
        raise ValueError("need n_splits >= 1 and at least two comparisons")
    gen = np.random.default_rng(rng)
    correlations = []
    for _ in range(n_splits):
        order = gen.permutation(f.size)
        halves = (order[: f.size // 2], order[f.size // 2 :])
        a, b = (
            fit_bradley_terry(
                n_items,
                f[h],
                s[h],
                y[h],
                prior=prior,
                order_effect=order_effect,
                standard_errors="none",
            ).theta
            for h in halves
        )
        if np.std(a) == 0.0 or np.std(b) == 0.0:
            return float("nan")
        correlations.append(float(np.corrcoef(a, b)[0, 1]))
    r = float(np.mean(correlations))
    if 1.0 + r <= 1e-9:  # r is -1 up to rounding
        return float("nan")
    return 2.0 * r / (1.0 + r)


def splits_needed(n_items: int, requested: int) -> int:
    """Random splits worth averaging for ``n_items`` essays: ``requested``, but no more than
    ⌈``SPLIT_ITEMS`` / n_items⌉ (at least 1). A split's correlation varies from split to
    split by about (1 − r²)/√n_items, so at 10,000 essays two splits pin the mean as well
    as ten do at 2,000, and at 100,000 one split does (docs/decisions.md)."""
    return max(1, min(requested, math.ceil(SPLIT_ITEMS / n_items)))
