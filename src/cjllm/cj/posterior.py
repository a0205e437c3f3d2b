"""The posterior of the judge model, sampled: what a ranking is published from.

Model (:mod:`cjllm.cj.scoring`): P(Essay A wins) = ε/2 + (1 − ε)·σ(θ_a − θ_b + δ), with
abilities θ_i ~ N(0, τ²), τ ~ half-normal(0, :data:`TAU_SCALE`), δ ~ N(0, 1/order_prior),
and either ε = 0 or ε sampled with the prior :data:`LAPSE_GRID` (half the mass on 0, half
spread evenly over 0.05–0.5). The scores, their SDs, the reliability and the order effect
all carry each other's uncertainty (and τ's, and ε's when it is sampled). The lapse model
published is the judge that reverses at least :data:`LAPSE_FLOOR` of its decisions at random:
its summaries come from the draws with ε at or above that floor, and its probability is the
share of those draws (the ε = 0.05–0.15 draws are nearly the clean model; averaged in, they
narrowed a lapsing judge's intervals below their coverage: docs/judgement.md).

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
4. τ | θ by Metropolis steps on log τ;
5. a few Metropolis-Hastings moves of the whole scale, c·(θ, δ, τ), with ε moved along
   when it is sampled (:func:`_rescale`): steps 1–4 alone crawl along that direction (τ and
   θ's spread constrain each other, and so do ε and the spread), and with ε sampled the
   plain sampler had an effective sample size of 1–4% of its draws for the SDs; these moves
   raise it 6–18 fold (docs/performance.md).

It starts from the round fit, so a short burn-in suffices; the draws are reproducible from
the seed. Cost per sweep: one dense Cholesky of n + 1 parameters (O(n³)), a few O(m)
passes over the comparisons, so it is used up to :data:`SAMPLER_LIMIT` essays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.linalg import lapack
from scipy.special import expit

from cjllm.cj.likelihood import BoolArray, FloatArray

SAMPLER_LIMIT = 400  # essays up to which the final fit is sampled (above: the Laplace fit)
# sweeps of burn-in (with ε = 0, with ε sampled: it mixes ~4× slower even with the scale
# moves) and kept: docs/performance.md, "The CJ service's fits"
BURN_IN = {False: 50, True: 100}
DRAWS = 600
RESCALES = {False: 2, True: 4}  # scale moves per sweep, with ε = 0 and with ε sampled
_RESCALE_STEP = 8.0  # SD of a scale move's log c, times √(comparisons)
LAPSE_GRID = np.round(np.arange(0.0, 0.501, 0.05), 2)  # ε's prior: half on 0, half spread
_LAPSE_LOG_PRIOR = np.log(np.where(LAPSE_GRID == 0.0, 0.5, 0.5 / (LAPSE_GRID.size - 1)))
TAU_SCALE = 1.5  # half-normal prior scale of τ, logits (why: docs/judgement.md)
# the lapse model is "the judge reverses at least this share of decisions at random"; its
# draws with ε below it are the clean model's (why 0.2: docs/judgement.md, "Which model")
LAPSE_FLOOR = 0.2
_FLOOR_DRAWS = 20  # fewer draws at or above the floor: the whole run is summarised
_SCALE_MOVES = 8  # joint (ε, scale) proposals per sweep of the lapse model
INTERVAL = (0.025, 0.975)  # the published interval: these quantiles of the draws
_PG_TERMS = 8  # terms of the Pólya-Gamma series drawn; the rest enters as its mean


@dataclass(frozen=True)
class Posterior:
    """Posterior summaries of one batch's comparisons.

    ``theta``/``se``: posterior mean and SD of the centred abilities; ``low``/``high``: their
    95% credible intervals, the posterior's 2.5% and 97.5% quantiles (:data:`INTERVAL`: what
    is published, not theta ± 1.96·se: the marginals of the essays at the ends of the scale
    are skewed; docs/judgement.md, "The published interval"). ``reliability``: the
    posterior mean of corr(theta, θ)², the squared correlation of the published scores with
    the essays' true abilities (what a reader wants reliability to mean). ``order_effect``/
    ``order_effect_se``: mean and SD of δ. ``lapse``: posterior median of ε, ``lapse_interval``
    its 95% highest-density interval. ``tau``: posterior median of τ. ``draws``/``tau_draws``:
    the draws these summarise (draws × essays, and τ's), for :mod:`cjllm.cj.model_average`.

    With ε sampled, ``lapse_probability`` is P(ε ≥ :data:`LAPSE_FLOOR`), and everything but ε's
    own summaries comes from the draws with ε ≥ :data:`LAPSE_FLOOR`: the lapse model's
    posterior, without the draws in which the judge is (nearly) clean.
    """

    theta: FloatArray
    se: FloatArray
    low: FloatArray
    high: FloatArray
    reliability: float
    order_effect: float
    order_effect_se: float
    lapse: float
    lapse_interval: tuple[float, float]
    lapse_probability: float
    tau: float
    draws: FloatArray = field(repr=False, compare=False)
    tau_draws: FloatArray = field(repr=False, compare=False)


def pg_draw(c: FloatArray, rng: np.random.Generator, terms: int = _PG_TERMS) -> FloatArray:
    """Draws from the Pólya-Gamma PG(1, c) distributions: the first ``terms`` of its
    infinite sum of weighted exponentials drawn, the rest replaced by its mean (exact mean
    tanh(c/2)/(2c); the variance left out is below 10⁻³ of the total at 8 terms)."""
    a2 = (c / (2.0 * math.pi)) ** 2
    k = np.arange(1, terms + 1) - 0.5
    weights = 1.0 / (k[:, None] ** 2 + a2[None, :])  # terms × draws: sums run over rows
    g = rng.standard_exponential((terms, c.size))
    head = (g * weights).sum(axis=0) / (2.0 * math.pi**2)
    head_mean = weights.sum(axis=0) / (2.0 * math.pi**2)
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
    burn_in: int | None = None,
    lapse: bool = False,
    tau_scale: float = TAU_SCALE,
    rescales: int | None = None,
    floor: float = LAPSE_FLOOR,
) -> Posterior:
    """Sample the posterior (module docstring) from a starting point (a Laplace fit).
    ``burn_in``/``rescales`` (scale moves per sweep; 0: the plain Gibbs sampler, which mixes
    slowly along the scale): :data:`BURN_IN`/:data:`RESCALES` for the model when None.
    ``floor``: the lapse model's least ε (:func:`summarise`)."""
    burn_in = BURN_IN[lapse] if burn_in is None else burn_in
    rescales = RESCALES[lapse] if rescales is None else rescales
    kept_theta, kept = sample_chain(
        n_items, first, second, first_won, order_prior=order_prior, start_theta=start_theta,
        start_order=start_order, start_tau=start_tau, seed=seed, draws=draws, burn_in=burn_in,
        lapse=lapse, tau_scale=tau_scale, rescales=rescales,
    )  # fmt: skip
    return summarise(kept_theta, kept, lapse=lapse, floor=floor)


def summarise(
    kept_theta: FloatArray, kept: FloatArray, *, lapse: bool, floor: float = LAPSE_FLOOR
) -> Posterior:
    """The posterior summaries of a chain's kept draws: ``kept_theta`` (draws × essays) and
    ``kept`` (draws × (δ, ε, τ)); with ``lapse``, the lapse model's: its draws with
    ε ≥ ``floor`` (class docstring)."""
    eps = kept[:, 1]
    lapsing = eps >= floor - 1e-9
    if lapse and int(lapsing.sum()) >= _FLOOR_DRAWS:
        model_theta, model = kept_theta[lapsing], kept[lapsing]
    else:
        model_theta, model = kept_theta, kept
    low, high = np.quantile(model_theta, INTERVAL, axis=0)
    return Posterior(
        theta=model_theta.mean(axis=0),
        se=model_theta.std(axis=0, ddof=1),
        low=low,
        high=high,
        reliability=draw_reliability(model_theta),
        order_effect=float(model[:, 0].mean()),
        order_effect_se=float(model[:, 0].std(ddof=1)),
        lapse=float(np.median(eps)),
        lapse_interval=highest_density(eps),
        lapse_probability=float(np.mean(lapsing)) if lapse else 0.0,
        tau=float(np.median(model[:, 2])),
        draws=model_theta,
        tau_draws=model[:, 2],
    )


def draw_reliability(draws: FloatArray, weights: FloatArray | None = None) -> float:
    """The posterior mean of corr(posterior mean, θ)² over ``draws`` (draws × essays),
    each draw weighted by ``weights`` (summing to 1; None: equally)."""
    mean_theta = draws.mean(axis=0) if weights is None else weights @ draws
    centred = mean_theta - mean_theta.mean()
    draws_c = draws - draws.mean(axis=1, keepdims=True)
    norms = np.sqrt((draws_c**2).sum(axis=1)) * math.sqrt(float(centred @ centred))
    corr = np.divide(draws_c @ centred, norms, out=np.zeros(len(draws)), where=norms > 0.0)
    return float(np.mean(corr**2) if weights is None else weights @ corr**2)


def sample_chain(
    n: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    order_prior: float,
    start_theta: FloatArray,
    start_order: float,
    start_tau: float,
    seed: Sequence[int] | int,
    draws: int,
    burn_in: int,
    lapse: bool,
    tau_scale: float,
    rescales: int,
) -> tuple[FloatArray, FloatArray]:
    """The kept sweeps: centred abilities (draws × n) and (δ, ε, τ) (draws × 3)."""
    f = np.asarray(first, dtype=np.intp)
    s = np.asarray(second, dtype=np.intp)
    y = np.asarray(first_won, dtype=bool)
    m, size, d = f.size, n + 1, n
    rng = np.random.default_rng(seed)
    kappa: FloatArray = y - 0.5
    signs: FloatArray = np.where(y, 1.0, -1.0)
    # Q = Σ_k ω_k x_k x_kᵀ with x_k = e_f − e_s + e_δ: nine cells per comparison
    last = np.full(m, d, dtype=np.intp)
    rows = (f, s, f, s, f, last, s, last, last)
    cols = (f, s, s, f, last, f, last, s, last)
    cells = np.concatenate([r * size + c for r, c in zip(rows, cols, strict=True)])
    diagonal = np.arange(size) * (size + 1)
    theta = np.asarray(start_theta, dtype=np.float64).copy()
    delta, tau2 = float(start_order), max(start_tau, 0.05) ** 2
    eps = 0.0
    lapsed: BoolArray = np.zeros(m, dtype=bool)
    informed = kappa
    kept_theta = np.empty((draws, n))
    kept = np.empty((draws, 3))  # δ, ε, τ
    grid = LAPSE_GRID
    for sweep in range(burn_in + draws):
        eta = theta[f] - theta[s] + delta
        if lapse:
            theta, delta, tau2, eps = _scale_move(
                theta, delta, tau2, eps, f, s, y, order_prior, tau_scale, rng
            )
            eta = theta[f] - theta[s] + delta
            sig = expit(np.where(y, eta, -eta))
            log_post = _LAPSE_LOG_PRIOR + np.log(
                grid[:, None] / 2.0 + (1.0 - grid[:, None]) * sig[None, :]
            ).sum(axis=1)
            prob = np.exp(log_post - log_post.max())
            eps = float(grid[rng.choice(grid.size, p=prob / prob.sum())])
            informed_p = (1.0 - eps) * sig
            lapsed = rng.random(m) < (eps / 2.0) / (eps / 2.0 + informed_p)
            informed = np.where(lapsed, 0.0, kappa)
        omega = pg_draw(eta, rng)
        if lapse:
            omega[lapsed] = 0.0
        signed = np.concatenate([omega, omega, -omega, -omega, omega, omega, -omega, -omega, omega])
        q: FloatArray = np.bincount(cells, signed, size * size).astype(np.float64, copy=False)
        q[diagonal[:n]] += 1.0 / tau2
        q[diagonal[n]] += order_prior
        b = np.bincount(f, informed, size) - np.bincount(s, informed, size)
        b[d] = informed.sum()
        # z ~ N(Q⁻¹b, Q⁻¹): with Q = LLᵀ, z = L⁻ᵀ(L⁻¹b + ξ)
        factor, code = lapack.dpotrf(q.reshape(size, size), lower=True, overwrite_a=True,
                                     clean=False)  # fmt: skip
        if code != 0:
            raise np.linalg.LinAlgError("posterior precision matrix is not positive definite")
        half, _ = lapack.dtrtrs(factor, b, lower=True)
        z, _ = lapack.dtrtrs(factor, half + rng.standard_normal(size), lower=True, trans=1)
        theta, delta = z[:n], float(z[d])
        tau2 = _tau_step(tau2, float(np.dot(theta, theta)), n, tau_scale, rng)
        theta, delta, tau2, eps = _rescale(
            theta, delta, tau2, eps, (f, s, signs), order_prior, tau_scale, lapse, rescales, rng
        )
        if sweep >= burn_in:
            kept_theta[sweep - burn_in] = theta - theta.mean()
            kept[sweep - burn_in] = delta, eps, math.sqrt(tau2)
    return kept_theta, kept


def _log_likelihood(signed_eta: FloatArray, eps: float) -> float:
    """log P(the observed decisions) given η signed by the winner, at lapse rate ε."""
    if eps == 0.0:
        return -float(np.logaddexp(0.0, -signed_eta).sum())
    return float(np.log(eps / 2.0 + (1.0 - eps) * expit(signed_eta)).sum())


def _rescale(
    theta: FloatArray,
    delta: float,
    tau2: float,
    eps: float,
    design: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray],
    order_prior: float,
    tau_scale: float,
    lapse: bool,
    rescales: int,
    rng: np.random.Generator,
) -> tuple[FloatArray, float, float, float]:
    """``rescales`` Metropolis-Hastings steps along the posterior's slowest direction,
    the whole scale: (θ, δ, τ) → c·(θ, δ, τ), log c ~ N(0, (_RESCALE_STEP)²/m); when ε is
    sampled, ε moves with it to a neighbouring grid value and c is centred on
    (1 − ε)/(1 − ε′) (a judge that errs at random looks like essays closer together, so ε and
    the scale are strongly correlated and the Gibbs steps alone crawl along that ridge). The
    steps target the posterior of (θ, δ, τ, ε) itself, not the augmented one, so they may
    follow the Gibbs steps: those draw the augmentation afresh from its conditionals.
    Acceptance: likelihood ratio × c² (Jacobian c^(n+2) of scaling θ, δ and τ, times the
    c^(−n) of θ's prior, whose exponent is unchanged) × τ's, δ's and ε's prior ratios."""
    f, s, signs = design
    base = (theta[f] - theta[s] + delta) * signs  # η signed by the winner, at c = 1
    scale, k = 1.0, int(np.searchsorted(LAPSE_GRID, eps))
    current = _log_likelihood(base, eps)
    step = _RESCALE_STEP / math.sqrt(base.size)
    for _ in range(rescales):
        k_new = k + (1 if rng.random() < 0.5 else -1) if lapse else k
        jitter = math.exp(step * float(rng.standard_normal()))
        if not 0 <= k_new < LAPSE_GRID.size:  # off the grid: rejected
            continue
        c = jitter * (1.0 - LAPSE_GRID[k]) / (1.0 - LAPSE_GRID[k_new])
        proposed = _log_likelihood(scale * c * base, float(LAPSE_GRID[k_new]))
        grown = (scale * c) ** 2 - scale**2
        log_ratio = proposed - current + 2.0 * math.log(c)
        log_ratio -= grown * (tau2 / tau_scale**2 + order_prior * delta * delta) / 2.0
        log_ratio += _LAPSE_LOG_PRIOR[k_new] - _LAPSE_LOG_PRIOR[k]
        if math.log(rng.random()) < log_ratio:
            scale, k, current = scale * c, k_new, proposed
    return (
        scale * theta,
        scale * delta,
        scale * scale * tau2,
        float(LAPSE_GRID[k]) if lapse else eps,
    )


def _lapse_log_likelihood(eta: FloatArray, y: BoolArray, eps: float) -> float:
    sig = expit(np.where(y, eta, -eta))
    return float(np.log(eps / 2.0 + (1.0 - eps) * sig).sum())


def _scale_move(
    theta: FloatArray,
    delta: float,
    tau2: float,
    eps: float,
    f: npt.NDArray[np.intp],
    s: npt.NDArray[np.intp],
    y: BoolArray,
    order_prior: float,
    tau_scale: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, float, float, float]:
    """Metropolis-Hastings moves of ε together with the scale (ε and the scale trade off, so
    moving one at a time barely moves: the chain stuck at ε = 0 or ε > 0 for hundreds of
    sweeps, and P(ε > 0) differed from seed to seed by up to 0.7). A move proposes ε' from
    the grid at random and multiplies (θ, δ, τ) by c = (1 − ε)/(1 − ε'), which keeps the
    slope (1 − ε)·η of close comparisons; it is its own inverse, with Jacobian c^(n+2), so
    the acceptance ratio is the likelihood ratio times the priors' ratio times c^(n+2)."""
    n = theta.size
    eta = theta[f] - theta[s] + delta
    current = _lapse_log_likelihood(eta, y, eps)
    for _ in range(_SCALE_MOVES):
        proposal = float(LAPSE_GRID[rng.integers(LAPSE_GRID.size)])
        if proposal == eps:
            continue
        c = (1.0 - eps) / (1.0 - proposal)
        proposed = _lapse_log_likelihood(c * eta, y, proposal)
        log_ratio = (
            proposed
            - current
            + _LAPSE_LOG_PRIOR[np.searchsorted(LAPSE_GRID, proposal)]
            - _LAPSE_LOG_PRIOR[np.searchsorted(LAPSE_GRID, eps)]
            - (c * c - 1.0) * tau2 / (2.0 * tau_scale**2)  # τ's half-normal prior
            - (c * c - 1.0) * delta * delta * order_prior / 2.0  # δ's normal prior
            - n * math.log(c)  # N(θ | 0, τ²) with θ and τ both scaled
            + (n + 2) * math.log(c)  # Jacobian of (θ, δ, τ) → c·(θ, δ, τ)
        )
        if math.log(rng.random()) < log_ratio:
            theta, delta, tau2, eta = c * theta, c * delta, c * c * tau2, c * eta
            eps, current = proposal, proposed
    return theta, delta, tau2, eps


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
