"""The population SD τ of maximum Laplace evidence, found from the evidence's slope in log τ.

For ε = 0 and a prior λ = 1/τ² on every ability, the Laplace evidence of the comparisons
(:attr:`cjllm.cj.scoring.BTFit.log_evidence`) is

    E(λ) = Φ(ẑ, λ) + (n/2)·log λ − ½·log det H(ẑ, λ),

with Φ the log-posterior (without constants), ẑ = (θ̂, δ̂) its maximum and H = J(ẑ) + Λ the
information there (J = Σ_g w_g·x_g x_gᵀ over the groups of comparisons, x_g = ∂η_g/∂z,
w_g = c_g·p_g(1 − p_g); Λ the prior precisions). Its exact derivative, with S = H⁻¹ (from the
Cholesky factor the log-determinant needs anyway) and ż = dẑ/dλ = −S·(θ̂, 0):

    dE/dλ = −½·|θ̂|² + n/(2λ) − ½·[tr S_θθ + Σ_g w'_g·(x_gᵀż)·(x_gᵀS x_g)],

w'_g = c_g·p_g(1 − p_g)(1 − 2p_g) (the envelope theorem removes Φ's dependence through ẑ; the
last sum is H's dependence through ẑ). dE/d log τ = −2λ·dE/dλ. :func:`search_log_tau` finds
its zero by secant steps kept inside the bracket found so far (bisection when a step would
leave it); the first step is MacKay's fixed point τ² = |θ̂|²/(n − λ·tr S_θθ) when it goes the
slope's way (it is biased low, so often it does not), else 0.5. Each fit starts from the
previous one. This replaces a derivative-free bounded Brent search on the evidence (~9 fits
a round fit) by ~4, each with one more O(n³) step (the inverse from the Cholesky factor);
docs/decisions.md, equivalence in ``tests/cj/test_tau_search.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, lapack
from scipy.special import expit

from cjllm.cj.likelihood import FloatArray, LogPosterior

MAX_STEPS = 40  # evaluations at most (each one Newton fit); the search returns None beyond
_LARGEST_STEP = 1.5  # in log τ: a secant step through a poorly curved region is cut to this
_FIRST_STEP = 0.5  # in log τ, the slope's way, when there is nothing better to go by


@dataclass(frozen=True)
class Slope:
    """At one log τ: the Laplace evidence, dE/d log τ and the MacKay fixed-point proposal
    for log τ (None when it does not exist)."""

    log_tau: float
    evidence: float
    slope: float
    proposal: float | None


def evidence_slope(problem: LogPosterior, z: FloatArray) -> Slope:
    """E and dE/d log τ (module docstring) at the maximum ``z`` of ``problem`` (ε = 0,
    prior > 0: every coordinate but an unfitted δ is free)."""
    n, lam = problem.n, problem.prior
    if not lam > 0.0:
        raise ValueError("the evidence slope needs prior > 0")
    keep = problem.free
    w = problem.weights(z)
    factor, code = lapack.dpotrf(
        problem.dense_information(w, keep).T, lower=True, overwrite_a=True, clean=False
    )
    if code != 0:
        raise np.linalg.LinAlgError("information matrix is not positive definite")
    log_det = 2.0 * float(np.sum(np.log(np.diag(factor))))
    evidence = problem.objective(z) + 0.5 * n * math.log(lam) - 0.5 * log_det
    lower, code = lapack.dpotri(factor, lower=True)  # S's lower triangle (upper: garbage)
    if code != 0:
        raise np.linalg.LinAlgError("information matrix could not be inverted")
    theta = z[:n]
    rhs = np.zeros(lower.shape[0])
    rhs[:n] = theta
    z_dot = blas.dsymv(-1.0, lower, rhs, lower=1)  # dẑ/dλ over the kept coordinates
    gf, gs = problem.gf, problem.gs
    big, small = np.maximum(gf, gs), np.minimum(gf, gs)
    x_dot = z_dot[gf] - z_dot[gs]
    diagonal = np.diagonal(lower)
    leverage = diagonal[gf] + diagonal[gs] - 2.0 * lower[big, small]
    if keep[n]:  # δ is the last kept coordinate: its row of the lower triangle is full
        x_dot += z_dot[n]
        leverage += 2.0 * (lower[n, gf] - lower[n, gs]) + lower[n, n]
    p = expit(problem.eta(z))
    w_dash = problem.count * p * (1.0 - p) * (1.0 - 2.0 * p)
    trace = float(np.sum(diagonal[:n]))
    theta_sq = float(theta @ theta)
    d_lambda = -0.5 * theta_sq + 0.5 * n / lam - 0.5 * (trace + float(w_dash @ (x_dot * leverage)))
    effective = n - lam * trace  # MacKay's γ: abilities the comparisons determine
    proposal = 0.5 * math.log(theta_sq / effective) if effective > 0 and theta_sq > 0 else None
    return Slope(-0.5 * math.log(lam), evidence, -2.0 * lam * d_lambda, proposal)


def search_log_tau(
    evaluate: Callable[[float], Slope],
    start: float,
    bounds: tuple[float, float],
    xtol: float,
) -> float | None:
    """The log τ in ``bounds`` (log scale) where dE/d log τ changes sign from + to −, or the
    bound the slope points out of, to within ``xtol`` (the last step). ``evaluate(log τ)``
    fits there (starting from its previous fit) and gives the :class:`Slope`; ``start``: the
    first log τ. None when :data:`MAX_STEPS` fits did not settle it."""
    low, high = bounds
    below, above = low, high  # the bracket: slope > 0 at ``below``, < 0 at ``above`` if seen
    seen_below = seen_above = False
    previous: Slope | None = None
    log_tau = min(max(start, low), high)
    for _ in range(MAX_STEPS):
        here = evaluate(log_tau)
        if here.slope >= 0.0:
            if log_tau >= high:
                return high
            below, seen_below = log_tau, True
        else:
            if log_tau <= low:
                return low
            above, seen_above = log_tau, True
        step = _secant(here, previous)
        if step is None and previous is None and here.proposal is not None:
            step = here.proposal - log_tau  # MacKay's, if it goes the slope's way
            step = step if step * here.slope > 0.0 else None
        if step is None or not math.isfinite(step):
            step = _FIRST_STEP if here.slope >= 0.0 else -_FIRST_STEP
        step = max(-_LARGEST_STEP, min(_LARGEST_STEP, step))
        proposed = min(max(log_tau + step, low), high)
        if (seen_below and proposed <= below) or (seen_above and proposed >= above):
            proposed = 0.5 * (below + above)  # the step left the bracket: bisect it
        if abs(proposed - log_tau) < xtol:
            return proposed
        log_tau, previous = proposed, here
    return None


def _secant(here: Slope, previous: Slope | None) -> float | None:
    """The secant step to the slope's zero, when the two points show E concave between them."""
    if previous is None or here.log_tau == previous.log_tau:
        return None
    curvature = (here.slope - previous.slope) / (here.log_tau - previous.log_tau)
    return -here.slope / curvature if curvature < 0.0 else None
