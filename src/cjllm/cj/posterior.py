"""The posterior of the judge model, sampled: what a ranking is published from.

Model (:mod:`cjllm.cj.scoring`): P(Essay A wins) = ε/2 + (1 − ε)·σ(θ_a − θ_b + δ), with
abilities θ_i ~ N(0, τ²), τ ~ half-normal(0, :data:`TAU_SCALE`), δ ~ N(0, 1/order_prior),
and either ε = 0 or ε sampled with the prior :data:`LAPSE_GRID` (half the mass on 0, half
spread evenly over 0.05–0.5). The scores, their SDs, the reliability and the order effect
all carry each other's uncertainty (and τ's, and ε's when it is sampled).

Why a sampler and not the Laplace evidence of :mod:`cjllm.cj.population` (which the round
fits keep, to steer the pairing): the Laplace evidence puts τ too low in sparse adaptive
designs, and with ε > 0 an essay's likelihood is bounded below (an upset costs at most
log(ε/2)), so the posterior has flat shoulders the Gaussian approximation misses. The τ
prior must be proper: with ε > 0 the likelihood stays bounded away from 0 as τ → ∞.

One sweep, every step an exact conditional draw (data augmentation):

1. with ε sampled: ε from its grid posterior given (θ, δ), then which comparisons were coin
   tosses: each with probability (ε/2) / (ε/2 + (1 − ε)·σ(±η_k));
2. Pólya-Gamma variables ω_k ~ PG(1, η_k) for the others (Polson, Scott & Windle 2013),
   which make the logistic likelihood Gaussian in (θ, δ);
3. (θ, δ) | ω ~ N(Q⁻¹b, Q⁻¹), Q = Xᵀ diag(ω) X + prior precisions, b = Xᵀ(y − ½);
4. τ | θ by Metropolis steps on log τ.

It starts from the round fit, so a short burn-in suffices; the draws are reproducible from
the seed. Cost per sweep: one dense Cholesky of n + 1 parameters (O(n³)), so it is used up to
:data:`SAMPLER_LIMIT` essays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.special import expit

from cjllm.cj.likelihood import BoolArray, FloatArray, sum_by

SAMPLER_LIMIT = 400  # essays up to which the final fit is sampled (above: the Laplace fit)
BURN_IN = 150
DRAWS = 600
LAPSE_GRID = np.round(np.arange(0.0, 0.501, 0.05), 2)  # ε's prior: half on 0, half spread
_LAPSE_LOG_PRIOR = np.log(np.where(LAPSE_GRID == 0.0, 0.5, 0.5 / (LAPSE_GRID.size - 1)))
TAU_SCALE = 3.0  # half-normal prior scale of τ, logits
_PG_TERMS = 8  # terms of the Pólya-Gamma series drawn; the rest enters as its mean


@dataclass(frozen=True)
class Posterior:
    """Posterior summaries of one batch's comparisons.

    ``theta``/``se``: posterior mean and SD of the centred abilities. ``reliability``: the
    posterior mean of corr(theta, θ)², the squared correlation of the published scores with
    the essays' true abilities (what a reader wants reliability to mean). ``order_effect``/
    ``order_effect_se``: mean and SD of δ. ``lapse``: posterior median of ε, ``lapse_interval``
    its 95% highest-density interval. ``tau``: posterior median of τ.
    """

    theta: FloatArray
    se: FloatArray
    reliability: float
    order_effect: float
    order_effect_se: float
    lapse: float
    lapse_interval: tuple[float, float]
    lapse_probability: float
    tau: float


def pg_draw(c: FloatArray, rng: np.random.Generator, terms: int = _PG_TERMS) -> FloatArray:
    """Draws from the Pólya-Gamma PG(1, c) distributions: the first ``terms`` of its
    infinite sum of weighted exponentials drawn, the rest replaced by its mean (exact mean
    tanh(c/2)/(2c); the variance left out is below 10⁻³ of the total at 8 terms)."""
    a2 = (c / (2.0 * math.pi)) ** 2
    k = np.arange(1, terms + 1) - 0.5
    denominators = k[None, :] ** 2 + a2[:, None]
    g = rng.standard_exponential((c.size, terms))
    head = (g / denominators).sum(axis=1) / (2.0 * math.pi**2)
    head_mean = (1.0 / denominators).sum(axis=1) / (2.0 * math.pi**2)
    small = np.abs(c) < 1e-6
    safe = np.where(small, 1.0, c)
    mean = np.where(small, 0.25, np.tanh(safe / 2.0) / (2.0 * safe))
    result: FloatArray = head + (mean - head_mean)
    return result


def sample_posterior(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_prior: float,
    start_theta: FloatArray,
    start_order: float,
    start_tau: float,
    seed: Sequence[int] | int,
    draws: int = DRAWS,
    burn_in: int = BURN_IN,
    lapse: bool = False,
    tau_scale: float = TAU_SCALE,
) -> Posterior:
    """Sample the posterior (module docstring) from a starting point (a Laplace fit)."""
    f = np.asarray(first, dtype=np.intp)
    s = np.asarray(second, dtype=np.intp)
    y = np.asarray(first_won, dtype=bool)
    n, m, size = n_items, f.size, n_items + 1
    rng = np.random.default_rng(seed)
    kappa: FloatArray = y - 0.5
    # Q = Σ_k ω_k x_k x_kᵀ with x_k = e_f − e_s + e_δ: seven entries per comparison
    d = n
    flat_ff, flat_ss = f * size + f, s * size + s
    flat_fs, flat_sf = f * size + s, s * size + f
    flat_fd, flat_df = f * size + d, d * size + f
    flat_sd, flat_ds = s * size + d, d * size + s
    flat_dd = np.full(m, d * size + d)
    index = np.concatenate(
        [flat_ff, flat_ss, flat_fs, flat_sf, flat_fd, flat_df, flat_sd, flat_ds, flat_dd]
    )
    signs = np.concatenate([np.ones(2 * m), -np.ones(2 * m), np.ones(2 * m), -np.ones(2 * m),
                            np.ones(m)])  # fmt: skip
    theta = np.asarray(start_theta, dtype=np.float64).copy()
    delta, tau2 = float(start_order), max(start_tau, 0.05) ** 2
    eps = 0.0
    lapsed: BoolArray = np.zeros(m, dtype=bool)
    kept_theta = np.empty((draws, n))
    kept = np.empty((draws, 3))  # δ, ε, τ
    items, grid = np.arange(n), LAPSE_GRID
    for sweep in range(burn_in + draws):
        eta = theta[f] - theta[s] + delta
        if lapse:
            sig = expit(np.where(y, eta, -eta))
            log_post = _LAPSE_LOG_PRIOR + np.log(
                grid[:, None] / 2.0 + (1.0 - grid[:, None]) * sig[None, :]
            ).sum(axis=1)
            prob = np.exp(log_post - log_post.max())
            eps = float(grid[rng.choice(grid.size, p=prob / prob.sum())])
            informed_p = (1.0 - eps) * sig
            lapsed = rng.random(m) < (eps / 2.0) / (eps / 2.0 + informed_p)
        omega = np.where(lapsed, 0.0, pg_draw(eta, rng))
        weights = np.tile(omega, 9) * signs
        q = sum_by(index, weights, size * size).reshape(size, size)
        q[items, items] += 1.0 / tau2
        q[d, d] += order_prior
        informed = np.where(lapsed, 0.0, kappa)
        b = np.bincount(f, informed, size) - np.bincount(s, informed, size)
        b[d] = informed.sum()
        factor = cho_factor(q, lower=True)
        mean = cho_solve(factor, b)
        z = mean + solve_triangular(factor[0], rng.standard_normal(size), lower=True, trans="T")
        theta, delta = z[:n], float(z[d])
        tau2 = _tau_step(tau2, float(np.dot(theta, theta)), n, tau_scale, rng)
        if sweep >= burn_in:
            kept_theta[sweep - burn_in] = theta - theta.mean()
            kept[sweep - burn_in] = delta, eps, math.sqrt(tau2)
    mean_theta = kept_theta.mean(axis=0)
    centred = mean_theta - mean_theta.mean()
    draws_c = kept_theta - kept_theta.mean(axis=1, keepdims=True)
    norms = np.sqrt((draws_c**2).sum(axis=1)) * math.sqrt(float(centred @ centred))
    corr = np.divide(draws_c @ centred, norms, out=np.zeros(draws), where=norms > 0.0)
    return Posterior(
        theta=mean_theta,
        se=kept_theta.std(axis=0, ddof=1),
        reliability=float(np.mean(corr**2)),
        order_effect=float(kept[:, 0].mean()),
        order_effect_se=float(kept[:, 0].std(ddof=1)),
        lapse=float(np.median(kept[:, 1])),
        lapse_interval=highest_density(kept[:, 1]),
        lapse_probability=float(np.mean(kept[:, 1] > 0.0)),
        tau=float(np.median(kept[:, 2])),
    )


def _tau_step(tau2: float, sum_sq: float, n: int, scale: float, rng: np.random.Generator) -> float:
    """Metropolis steps on log τ given the abilities, under τ ~ half-normal(0, scale)."""

    def log_density(log_tau: float) -> float:
        tau_sq = math.exp(2.0 * log_tau)
        return -(n - 1) * log_tau - sum_sq / (2.0 * tau_sq) - tau_sq / (2.0 * scale**2)

    current = 0.5 * math.log(tau2)
    value = log_density(current)
    step = 1.0 / math.sqrt(2.0 * n)
    for _ in range(3):
        proposal = current + step * float(rng.standard_normal())
        proposed = log_density(proposal)
        if math.log(rng.random()) < proposed - value:
            current, value = proposal, proposed
    return math.exp(2.0 * current)


def highest_density(values: FloatArray, mass: float = 0.95) -> tuple[float, float]:
    """The shortest interval holding ``mass`` of the draws."""
    ordered = np.sort(values)
    span = max(1, math.ceil(mass * ordered.size) - 1)
    widths = ordered[span:] - ordered[:-span]
    low = int(np.argmin(widths))
    return float(ordered[low]), float(ordered[low + span])
