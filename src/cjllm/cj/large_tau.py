"""τ above ``EXACT_LIMIT`` essays: the Laplace evidence's slope with its traces estimated.

Below :data:`~cjllm.cj.uncertainty.EXACT_LIMIT` essays τ maximises the Laplace evidence,
searched on its exact slope (:mod:`cjllm.cj.tau_search`), which needs S = H⁻¹ densely. The
slope (tau_search's docstring),

    dE/dλ = −½·|θ̂|² + n/(2λ) − ½·[tr S_θθ + tr(S·A)],   A = Σ_g w'_g·(x_gᵀż)·x_g x_gᵀ,

uses S only through two traces and one solve ż = −S·(θ̂, 0). Above the limit both traces are
estimated by Hutchinson's estimator with the same random sign vectors v (tr M ≈ mean
vᵀ·M·v; X = S·V by Jacobi-preconditioned conjugate gradients on the sparse information, all
probes as one block; PROBE_WORK/n of them, 4 to 32), and ż is solved to 1e-8. The random signs are
fixed for a search (the same seed at every τ), so the estimated slope is a smooth function
of τ and the secant search of :func:`~cjllm.cj.tau_search.search_log_tau` runs on it as on
the exact one (first step 0.5 the slope's way, then secant steps).

Why not the EM update τ² = mean(θ̂² + se²): the slope's zero is the fixed point
τ² = (|θ̂|² + tr S_θθ + tr(S·A))/n, and EM's is that without tr(S·A), the information's
dependence on θ̂; with ~10 binary outcomes per essay that term is large and EM's τ biased
low (the PQL bias). The fixed point is not used as a step either: iterated, it converges
slowly (its first step from τ = 1 covered a fifth of the way at 10,000 essays), and a short
step would end the search.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from cjllm.cj.likelihood import FloatArray, LogPosterior
from cjllm.cj.scoring import BTFit, checked_comparisons, fit_bradley_terry, starting_point
from cjllm.cj.tau_search import Slope, search_log_tau
from cjllm.cj.uncertainty import _block_pcg

PROBE_WORK = 32_000  # probes × essays: the slope's error in log τ goes as 1/sqrt(probes·n)
MIN_PROBES, MAX_PROBES = 4, 32  # so 32 probes at 1,001 essays, 4 from 8,000 essays on
_PROBE_RTOL = 1e-4  # CG residual for the probes (as uncertainty's)
_RTOL = 1e-8  # CG residual for ż


def estimated_slope(
    problem: LogPosterior, z: FloatArray, *, probes: int | None = None, seed: int = 0
) -> Slope:
    """dE/d log τ (module docstring) at the maximum ``z`` of ``problem`` (ε = 0, prior > 0);
    ``evidence`` is NaN (no log-determinant is computed), ``proposal`` None. ``probes``:
    None for ``PROBE_WORK``/n within ``MIN_PROBES``..``MAX_PROBES``."""
    n, lam = problem.n, problem.prior
    if probes is None:
        probes = min(max(MIN_PROBES, -(-PROBE_WORK // n)), MAX_PROBES)
    if not lam > 0.0:
        raise ValueError("the evidence slope needs prior > 0")
    keep = problem.free
    w = problem.weights(z)
    info = problem.information(w)[keep][:, keep]
    diag = info.diagonal()
    m = diag.size

    def apply(x: FloatArray) -> FloatArray:
        out: FloatArray = info @ x
        return out

    rhs = np.zeros((m, 1))
    rhs[:n, 0] = -z[:n]
    z_dot = np.zeros(n + 1)
    z_dot[keep] = _block_pcg(apply, rhs, diag, rhs / diag[:, None], _RTOL)[:, 0]
    gen = np.random.default_rng(seed)
    v = gen.choice((-1.0, 1.0), size=(m, probes))
    x = _block_pcg(apply, v, diag, v / diag[:, None], _PROBE_RTOL)
    full_v, full_x = np.zeros((n + 1, probes)), np.zeros((n + 1, probes))
    full_v[keep], full_x[keep] = v, x
    trace = float(np.einsum("ij,ij->", full_v[:n], full_x[:n])) / probes
    gf, gs = problem.gf, problem.gs
    p = expit(problem.eta(z))
    a = problem.count * p * (1.0 - p) * (1.0 - 2.0 * p) * (z_dot[gf] - z_dot[gs] + z_dot[n])
    xv = full_v[gf] - full_v[gs] + full_v[n]  # x_gᵀv per group and probe (δ is 0 if not kept)
    xx = full_x[gf] - full_x[gs] + full_x[n]
    dependence = float(a @ np.einsum("ij,ij->i", xv, xx)) / probes
    theta = z[:n]
    theta_sq = float(theta @ theta)
    d_lambda = -0.5 * theta_sq + 0.5 * n / lam - 0.5 * (trace + dependence)
    return Slope(-0.5 * math.log(lam), math.nan, -2.0 * lam * d_lambda, None)


def fit_large_spread(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_effect: bool,
    order_prior: float,
    initial: BTFit | None,
    tau_bounds: tuple[float, float],
    xtol: float = 0.01,
) -> BTFit:
    """The MAP fit (ε = 0) at the τ where the estimated slope (:func:`estimated_slope`)
    changes sign, searched on log τ within ``tau_bounds`` to ``xtol`` from ``initial``'s τ
    (else τ = 1), each fit from the previous one; with its (estimated) standard errors. When
    the search does not settle, the τ of its last fit is kept."""
    f, s, y = checked_comparisons(n_items, first, second, first_won)
    nearest = initial

    def evaluate(log_tau: float) -> Slope:
        nonlocal nearest
        nearest = fit_bradley_terry(
            n_items, f, s, y, prior=math.exp(-2.0 * log_tau), order_effect=order_effect,
            order_prior=order_prior, initial=nearest, standard_errors="none",
        )  # fmt: skip
        problem = LogPosterior(
            n_items, f, s, y, order=order_effect, prior=nearest.prior, order_prior=order_prior
        )
        return estimated_slope(problem, starting_point(nearest, problem))

    start = 0.0
    if initial is not None and initial.prior > 0.0:
        start = -0.5 * math.log(initial.prior)
    bounds = (math.log(tau_bounds[0]), math.log(tau_bounds[1]))
    log_tau = search_log_tau(evaluate, start, bounds, xtol)
    assert nearest is not None  # search_log_tau evaluates at least once
    prior = nearest.prior if log_tau is None else math.exp(-2.0 * log_tau)
    return fit_bradley_terry(
        n_items, f, s, y, prior=prior, order_effect=order_effect, order_prior=order_prior,
        initial=nearest,
    )  # fmt: skip
