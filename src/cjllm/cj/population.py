"""The spread of abilities in a batch, chosen by the evidence.

Abilities are modelled as drawn from N(0, τ²): τ says how different the essays of this batch
are on the judge's logit scale. It is chosen to maximise the Laplace approximation to the
marginal likelihood of the comparisons (the evidence,
:attr:`cjllm.cj.scoring.BTFit.log_evidence`), and the scores are the MAP estimates under it,
averaged over the plausible τ. These are the round fits (pairing, stopping checks); the
ranking is published from the sampled posterior (:mod:`cjllm.cj.posterior`), which the
Laplace evidence approximates poorly in sparse adaptive designs and for ε > 0.

Why: a fixed weak prior leaves maximum likelihood's finite-sample spread in the scores, which
adaptive pairing amplifies, so intervals come out too narrow and scale-separation reliability
too high; with the prior fitted, the posterior conditions on the design (which depends only on
earlier outcomes), so its intervals and the reliability derived from them stay honest under
any pairing. The EM update τ² = mean(θ̂² + se²) is not used: with ~10 binary outcomes per essay
it underestimates τ badly (the PQL bias).

The lapse rate ε (the share of decisions that are a coin toss whatever the essays) is not
chosen here, and these fits have ε = 0: the Laplace evidence of ε > 0 is biased low (the
posterior of each ability has flat shoulders when an upset costs at most log(ε/2)), and the
bias grows with the number of essays: at 600 essays, 10 comparisons each, a judge flipping
20% of its decisions had its evidence 8 lower at ε = 0.2 than at ε = 0 (docs/judgement.md,
"Above 400 essays"). The final fit samples ε instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

from cjllm.cj.large_tau import fit_large_spread
from cjllm.cj.likelihood import DENSE_LIMIT, FloatArray, LogPosterior
from cjllm.cj.scoring import BTFit, checked_comparisons, fit_bradley_terry, starting_point
from cjllm.cj.tau_search import Slope, evidence_slope, search_log_tau
from cjllm.cj.uncertainty import EXACT_LIMIT

TAU_BOUNDS = (0.05, 10.0)  # logits: from "all essays alike" to "every comparison certain"
# Essays up to which τ is searched on the evidence's slope: while Newton's steps are dense
# Cholesky solves, one inverse more per fit costs less than the ~5 fits it saves; above,
# Newton runs on sparse conjugate gradients, the evidence's dense factorisation dominates
# a fit and the inverse (~2 factorisations) costs more than the fits saved (measured:
# docs/performance.md, issue 15's round fits).
SLOPE_LIMIT = DENSE_LIMIT - 1


def fit_spread(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_effect: bool = True,
    order_prior: float = 0.1,
    initial: BTFit | None = None,
    tau_bounds: tuple[float, float] = TAU_BOUNDS,
    xtol: float = 0.01,
    standard_errors: bool = True,
    search: Literal["slope", "brent"] | None = None,
) -> BTFit:
    """MAP fit under θ ~ N(0, τ²) with τ chosen by maximum evidence (ε = 0).

    ``order_effect``/``order_prior`` are passed to
    :func:`~cjllm.cj.scoring.fit_bradley_terry`; δ keeps its own fixed prior (its estimate
    must not collapse when the essays happen to be alike). τ is searched on log τ within
    ``tau_bounds`` to within ``xtol``: ``search`` "slope" by secant steps on the evidence's
    exact slope (:mod:`cjllm.cj.tau_search`, ~4 fits), "brent" by bounded Brent on the
    evidence itself (~9 fits; also where the slope search does not settle); None: "slope" up
    to :data:`SLOPE_LIMIT` essays, else "brent". Each fit starts from
    the previous one (the first from ``initial``, whose τ also starts the slope search) and
    computes no SEs; the returned fit has ``prior`` = 1/τ² and, when ``standard_errors``,
    its SEs.
    """
    low, high = tau_bounds
    if not 0.0 < low < high:
        raise ValueError(f"tau_bounds must satisfy 0 < low < high, got {tau_bounds}")
    if search is None:
        search = "slope" if n_items <= SLOPE_LIMIT else "brent"
    if search == "slope":
        searched = _slope_search(
            n_items, first, second, first_won, order_effect=order_effect,
            order_prior=order_prior, initial=initial, tau_bounds=tau_bounds, xtol=xtol,
        )  # fmt: skip
        if searched is not None:
            return fit_bradley_terry(
                n_items, first, second, first_won, prior=math.exp(-2.0 * searched[0]),
                order_effect=order_effect, order_prior=order_prior, initial=searched[1],
                standard_errors="auto" if standard_errors else "evidence",
            )  # fmt: skip
    start = initial
    fits: dict[float, BTFit] = {}

    def negative_evidence(log_tau: float) -> float:
        nonlocal start
        fit = fits.get(log_tau)
        if fit is None:
            fit = fit_bradley_terry(
                n_items,
                first,
                second,
                first_won,
                prior=math.exp(-2.0 * log_tau),
                order_effect=order_effect,
                order_prior=order_prior,
                initial=start,
                standard_errors="evidence",
            )
            fits[log_tau] = start = fit
        assert fit.log_evidence is not None  # prior > 0 always here
        return -fit.log_evidence

    best = minimize_scalar(
        negative_evidence,
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": xtol},
    )
    negative_evidence(float(best.x))
    found = fits[float(best.x)]
    if not standard_errors:
        return found
    return fit_bradley_terry(
        n_items, first, second, first_won, prior=found.prior, order_effect=order_effect,
        order_prior=order_prior, initial=found,
    )  # fmt: skip


def _slope_search(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_effect: bool,
    order_prior: float,
    initial: BTFit | None,
    tau_bounds: tuple[float, float],
    xtol: float,
) -> tuple[float, BTFit] | None:
    """:func:`~cjllm.cj.tau_search.search_log_tau` (ε = 0, each fit from the previous one):
    the log τ it finds and the fit nearest it, or None when it did not settle (the caller
    falls back to Brent)."""
    nearest = initial

    def evaluate(log_tau: float) -> Slope:
        nonlocal nearest
        nearest = fit_bradley_terry(
            n_items, first, second, first_won, prior=math.exp(-2.0 * log_tau),
            order_effect=order_effect, order_prior=order_prior, initial=nearest,
            standard_errors="none",
        )  # fmt: skip
        problem = LogPosterior(
            n_items, *checked_comparisons(n_items, first, second, first_won), order=order_effect,
            prior=nearest.prior, order_prior=order_prior,
        )  # fmt: skip
        return evidence_slope(problem, starting_point(nearest, problem))

    start = 0.0  # τ = 1 (abilities a logit apart) unless the initial fit has a prior
    if initial is not None and initial.prior > 0.0:
        start = -0.5 * math.log(initial.prior)
    bounds = (math.log(tau_bounds[0]), math.log(tau_bounds[1]))
    log_tau = search_log_tau(evaluate, start, bounds, xtol)
    if log_tau is None or nearest is None:
        return None
    return log_tau, nearest


@dataclass(frozen=True)
class PopulationFit:
    """Scores averaged over τ: the fit at the best τ, and the posterior mean and SD.

    ``fit``: the fit at the τ of largest evidence (order effect, prior). ``theta``/``se``:
    posterior mean and SD of the abilities averaged over τ (within-fit variance plus the
    spread of the fits' scores), so an uncertain τ widens the intervals. ``reliability``:
    the weighted mean of 1 − mean(se²)/τ² of those fits.
    """

    fit: BTFit
    theta: FloatArray
    se: FloatArray
    reliability: float

    @property
    def tau(self) -> float:
        """τ of :attr:`fit`."""
        return population_sd(self.fit)


def fit_population(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_effect: bool = True,
    order_prior: float = 0.1,
    initial: BTFit | None = None,
) -> PopulationFit:
    """:func:`fit_spread`, then the scores averaged over log τ by three-point
    Gauss-Hermite quadrature around its best value (weights 1/6, 2/3, 1/6), with the posterior
    SD of log τ from the curvature of the evidence (central differences, step 0.2).

    ε stays 0: with ε > 0 the Laplace evidence underestimates τ (the posterior is far from
    Gaussian when many decisions carry no information), which made reliability much too low
    (docs/judgement.md); the lapse rate is sampled by the final fit instead
    (:func:`cjllm.cj.ranking.final_fit`).

    Above :data:`~cjllm.cj.uncertainty.EXACT_LIMIT` essays the standard errors are estimated
    and no log-determinant is available for the evidence: τ is found where the evidence's
    slope, with its two traces estimated by random probes, changes sign
    (:func:`~cjllm.cj.large_tau.fit_large_spread`), and the scores, SEs and reliability
    1 − mean(se²)/τ² are those of the fit there, with no average over τ (with over 1,000
    essays τ is pinned down: its posterior SD in log τ is a few hundredths, and the three
    nodes' scores would differ by less than the SEs' own estimation error). Before, a fixed
    prior 0.1 and the classical scale-separation reliability were used there, which adaptive
    pairing inflates (reliability 0.12 above r², 95% intervals covering ~80%:
    docs/judgement.md, "Above 1,000 essays").
    """
    if n_items > EXACT_LIMIT:
        fit = fit_large_spread(
            n_items, first, second, first_won, order_effect=order_effect,
            order_prior=order_prior, initial=initial, tau_bounds=TAU_BOUNDS,
        )  # fmt: skip
        return PopulationFit(fit, np.asarray(fit.theta), np.asarray(fit.se), _reliability(fit))
    best = fit_spread(
        n_items, first, second, first_won, order_effect=order_effect, order_prior=order_prior,
        initial=initial,
    )  # fmt: skip

    def fit_at(log_tau: float, standard_errors: bool) -> BTFit:
        return fit_bradley_terry(
            n_items, first, second, first_won, prior=math.exp(-2.0 * log_tau),
            order_effect=order_effect, order_prior=order_prior, initial=best,
            standard_errors="auto" if standard_errors else "evidence",
        )  # fmt: skip

    nodes = _tau_quadrature(best, fit_at)
    w = np.array([share for _, share in nodes])
    thetas = np.array([f.theta for f, _ in nodes])
    theta = w @ thetas
    variance = w @ np.array([f.se**2 for f, _ in nodes]) + w @ (thetas - theta) ** 2
    reliability = float(w @ np.array([_reliability(f) for f, _ in nodes]))
    return PopulationFit(best, theta, np.sqrt(variance), reliability)


_GAUSS_HERMITE = ((-math.sqrt(3.0), 1 / 6), (0.0, 2 / 3), (math.sqrt(3.0), 1 / 6))
_STEP = 0.2


def _tau_quadrature(
    best: BTFit, fit_at: Callable[[float, bool], BTFit]
) -> list[tuple[BTFit, float]]:
    """Fits at the Gauss-Hermite nodes of log τ around ``best``, with their weights
    (``fit_at(log τ, standard_errors)``: SEs only at the nodes, the evidence everywhere)."""
    centre = -0.5 * math.log(best.prior)
    lowest, highest = (math.log(t) for t in TAU_BOUNDS)
    if not lowest + _STEP < centre < highest - _STEP:  # on a bound: nothing to integrate
        return [(best, 1.0)]
    low, high = (_evidence(fit_at(centre + h, False)) for h in (-_STEP, _STEP))
    curvature = (low + high - 2.0 * _evidence(best)) / _STEP**2
    if not curvature < 0.0:  # flat: no spread to integrate over
        return [(best, 1.0)]
    sd = 1.0 / math.sqrt(-curvature)
    nodes = []
    for node, share in _GAUSS_HERMITE:
        log_tau = min(max(centre + node * sd, lowest), highest)
        nodes.append((best if node == 0.0 else fit_at(log_tau, True), share))
    return nodes


def _evidence(fit: BTFit) -> float:
    if fit.log_evidence is None:
        raise ValueError("a population fit needs prior > 0")
    return fit.log_evidence


def _reliability(fit: BTFit) -> float:
    return float(1.0 - np.mean(fit.se**2) * fit.prior)


def population_sd(fit: BTFit) -> float:
    """τ of a fit made under the population prior (1/sqrt(prior))."""
    return float(1.0 / np.sqrt(fit.prior))
