"""From comparison rows to scores: the per-round fit, the final fit and the ranking.

Essays are indexed by their position in the batch. Every successful comparison enters the
judge model (:mod:`cjllm.cj.scoring`) with the first-position effect δ always fitted and
abilities under a population prior N(0, τ²) whose τ the comparisons choose, the scores
averaged over the plausible τ (:func:`cjllm.cj.population.fit_population`); failed and
pending ones do not. The final fit also samples the judge's lapse rate (up to
:data:`LAPSE_LIMIT` essays). Scores are log-abilities (logits).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from cjllm.cj.grades import project_grades
from cjllm.cj.model_average import published
from cjllm.cj.options import BatchOptions
from cjllm.cj.population import fit_population
from cjllm.cj.posterior import SAMPLER_LIMIT, Posterior, sample_posterior
from cjllm.cj.records import EssayRecord, EssayResult, PairOutcome
from cjllm.cj.reliability import (
    scale_separation_reliability,
    split_half_reliability,
    splits_needed,
)
from cjllm.cj.scoring import BTFit, connected_components, fit_bradley_terry
from cjllm.cj.tables import ComparisonStatus
from cjllm.contracts import OrderEffect, RankedEssay

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Z95 = 1.959963984540054
# essays up to which the final fit samples the lapse model (above SAMPLER_LIMIT: its chain
# alone, ~14 s CPU at 1,000 essays, growing as n³: docs/judgement.md, "Above 400 essays")
LAPSE_LIMIT = 1000


@dataclass(frozen=True)
class BatchFit:
    """The fit after a round: abilities, SEs and the successful comparisons behind them.

    ``theta``/``se`` are averaged over the plausible τ; ``model`` is the fit at the best τ
    (None before the first success); ``population_sd`` is τ (None before the first success).
    The final fit sets the rest: ``lapse_rate`` and
    ``lapse_interval`` (the judge's estimated lapse rate), and, when it ``sampled`` the
    posterior (:mod:`cjllm.cj.posterior`; above ``SAMPLER_LIMIT`` essays the lapse chain
    only, and no ``order_estimate``), ``order_estimate`` (δ and its posterior SD) and
    ``scored_with_lapse`` (the lapse model is the more probable one: it scores the essays
    alone, or with weight P > ½ in :mod:`cjllm.cj.model_average`'s average) with
    ``lapse_probability``, the posterior probability of ε ≥ ``posterior.LAPSE_FLOOR``, and
    ``low``/``high``, the published 95% intervals: the posterior's 2.5% and 97.5% quantiles
    (:meth:`interval95`).
    """

    theta: FloatArray
    se: FloatArray
    first: IntArray
    second: IntArray
    first_won: npt.NDArray[np.bool_]
    reliability: float | None
    mean_se: float | None
    model: BTFit | None = None
    population_sd: float | None = None
    lapse_rate: float | None = None
    lapse_interval: tuple[float, float] | None = None
    order_estimate: tuple[float, float] | None = None
    sampled: bool = False
    scored_with_lapse: bool = False
    lapse_probability: float | None = None
    low: FloatArray | None = None
    high: FloatArray | None = None

    @property
    def successes(self) -> int:
        return int(self.first.size)

    def interval95(self) -> tuple[FloatArray, FloatArray]:
        """The 95% intervals published with the scores: the sampled posterior's 2.5–97.5%
        quantiles when the final fit sampled it, else theta ± 1.96·se (a Gaussian fit's)."""
        if self.low is not None and self.high is not None:
            return self.low, self.high
        return self.theta - Z95 * self.se, self.theta + Z95 * self.se

    def order_effect(self) -> OrderEffect | None:
        """δ with its SE and the raw share of decisive comparisons Essay A won."""
        model = self.model
        if self.order_estimate is not None:
            delta, se = self.order_estimate
        elif model is None or model.order_effect is None or model.order_effect_se is None:
            return None
        else:
            delta, se = model.order_effect, model.order_effect_se
        return OrderEffect(
            logit=delta,
            se=se,
            essay_a_wins=int(self.first_won.sum()),
            decisive=self.successes,
            significant=abs(delta) > Z95 * se,
        )


def seed_for(batch_id: str, *salt: int) -> list[int]:
    """A reproducible seed for a batch's random choices (pairing, split halves)."""
    digest = hashlib.sha256(batch_id.encode("utf-8")).digest()
    return [int.from_bytes(digest[:8], "big"), *salt]


def _successes(
    essays: Sequence[EssayRecord], outcomes: Sequence[PairOutcome]
) -> tuple[IntArray, IntArray, npt.NDArray[np.bool_]]:
    index = {e.essay_id: e.position for e in essays}
    done = [o for o in outcomes if o.status is ComparisonStatus.SUCCEEDED]
    first = np.array([index[o.essay_a_id] for o in done], dtype=np.intp)
    second = np.array([index[o.essay_b_id] for o in done], dtype=np.intp)
    won = np.array([o.winner == "Essay A" for o in done], dtype=bool)
    return first, second, won


def fit_outcomes(
    essays: Sequence[EssayRecord], outcomes: Sequence[PairOutcome], options: BatchOptions
) -> BatchFit:
    """The fit after a round. No successes yet: θ = 0, no SE, no reliability."""
    first, second, won = _successes(essays, outcomes)
    n = len(essays)
    if not first.size:
        return BatchFit(np.zeros(n), np.full(n, np.nan), first, second, won, None, None)
    fit = fit_population(n, first, second, won, order_prior=options.bt_prior)
    return BatchFit(
        theta=fit.theta,
        se=fit.se,
        first=first,
        second=second,
        first_won=won,
        reliability=fit.reliability,
        mean_se=float(np.mean(fit.se)),
        model=fit.fit,
        population_sd=fit.tau,
    )


def final_fit(
    essays: Sequence[EssayRecord],
    outcomes: Sequence[PairOutcome],
    options: BatchOptions,
    *,
    fit: BatchFit | None = None,
    executor: Executor | None = None,
) -> BatchFit:
    """The fit a ranking is published from: the posterior of the judge model sampled
    (:mod:`cjllm.cj.posterior`) from :func:`fit_outcomes`' fit, once with ε = 0 and once with
    ε sampled. The scores, SDs and reliability come from the two models averaged
    (:mod:`cjllm.cj.model_average`) when the batch has ``AVERAGE_FROM`` successful
    comparisons per essay or more, else from the more probable of the two (the lapse model,
    from its draws with ε ≥ ``posterior.LAPSE_FLOOR``, when P(ε ≥ ``LAPSE_FLOOR``) > 1/2: the
    median probability model); ``scored_with_lapse`` says the lapse model is the more
    probable. The order effect comes from the first run and the lapse rate from the second.
    Above ``SAMPLER_LIMIT`` essays (up to :data:`LAPSE_LIMIT`) only the ε-sampled chain is
    run, with the choice (no average: there is no ε = 0 chain to average with): the
    lapse model's draws publish when P(ε ≥ ``LAPSE_FLOOR``) > 1/2, else :func:`fit_outcomes`'
    fit (ε = 0, the Laplace fit) stays, with the order effect from it and the lapse rate
    from the chain (:func:`_lapse_above_sampler`); above :data:`LAPSE_LIMIT` essays
    :func:`fit_outcomes` alone (ε is not reported).

    ``fit``: :func:`fit_outcomes` of these outcomes when the caller has it already (the
    workflow's round fit); ``executor``: runs the ε-sampled chain while this thread runs the
    other (:mod:`cjllm.cj.chain_process`); the draws are the same either way, and an error
    of the executor (its process died) is raised, never replaced by a run here."""
    if fit is None:
        fit = fit_outcomes(essays, outcomes, options)
    elif not _same_successes(fit, *_successes(essays, outcomes)):
        raise ValueError("final_fit was given the fit of other comparisons")
    model, tau = fit.model, fit.population_sd
    n = len(essays)
    if model is None or tau is None or n > LAPSE_LIMIT:  # nothing judged, or too many
        return fit
    chain = partial(
        sample_posterior,
        n,
        fit.first,
        fit.second,
        fit.first_won,
        order_prior=options.bt_prior,
        start_theta=np.asarray(model.theta),
        start_order=model.order_effect or 0.0,
        start_tau=tau,
        seed=_data_seed(fit),
    )
    elsewhere = executor.submit(chain, lapse=True) if executor is not None else None
    clean = chain(lapse=False) if n <= SAMPLER_LIMIT else None
    lapsing = elsewhere.result() if elsewhere is not None else chain(lapse=True)
    if clean is None:
        return _lapse_above_sampler(fit, lapsing)
    # the two models averaged, or the more probable alone with few comparisons per essay
    # (model_average.published); the order effect as a shift of the observed decisions
    # (ε = 0): under the lapse model it is on the informed decisions' scale, which the
    # comparisons pin down poorly
    return _scored_by(
        _with_lapse(fit, lapsing),
        published(clean, lapsing, 2 * fit.successes / n),
        order_estimate=(clean.order_effect, clean.order_effect_se),
        scored_with_lapse=lapsing.lapse_probability > 0.5,
    )


def _with_lapse(fit: BatchFit, lapsing: Posterior) -> BatchFit:
    """``fit`` with the ε-sampled chain's lapse rate, its interval and P(ε ≥ LAPSE_FLOOR)."""
    return replace(
        fit,
        lapse_rate=lapsing.lapse,
        lapse_interval=lapsing.lapse_interval,
        sampled=True,
        lapse_probability=lapsing.lapse_probability,
    )


def _scored_by(fit: BatchFit, scores: Posterior, **also: Any) -> BatchFit:
    """``fit`` with the scores, SDs, intervals, reliability and τ of a chain's draws."""
    return replace(
        fit,
        theta=scores.theta,
        se=scores.se,
        low=scores.low,
        high=scores.high,
        reliability=scores.reliability,
        mean_se=float(np.mean(scores.se)),
        population_sd=scores.tau,
        **also,
    )


def _lapse_above_sampler(fit: BatchFit, lapsing: Posterior) -> BatchFit:
    """The final fit above ``SAMPLER_LIMIT`` essays from the ε-sampled chain alone: the
    lapse model's draws when P(ε ≥ ``LAPSE_FLOOR``) > 1/2 (the rule below the limit), else
    the round fit (ε = 0) with the chain's lapse rate. The ε = 0 chain is not run: it costs
    as much again (one dense Cholesky factorisation per sweep), and the round fit is
    calibrated for a clean judge at this size (coverage 0.92–0.93 at 600 and 1,000 essays:
    docs/judgement.md; the ε = 0 chain was not measured against it)."""
    fit = _with_lapse(fit, lapsing)
    if lapsing.lapse_probability <= 0.5:
        return fit
    return _scored_by(fit, lapsing, scored_with_lapse=True)


def _same_successes(
    fit: BatchFit, first: IntArray, second: IntArray, won: npt.NDArray[np.bool_]
) -> bool:
    return (
        np.array_equal(fit.first, first)
        and np.array_equal(fit.second, second)
        and np.array_equal(fit.first_won, won)
    )


def _data_seed(fit: BatchFit) -> list[int]:
    """A seed from the comparisons themselves: the same outcomes give the same draws."""
    digest = hashlib.sha256()
    for array in (fit.first, fit.second, fit.first_won):
        digest.update(np.ascontiguousarray(array).tobytes())
    return [int.from_bytes(digest.digest()[:8], "big")]


def classical_ssr(fit: BatchFit, n_essays: int, prior: float) -> float | None:
    """Scale-separation reliability of a fit with the fixed weak prior ``prior`` (no
    population prior, ε = 0): the statistic other CJ tools report, kept for comparison."""
    if fit.successes < 2:
        return None
    try:
        weak = fit_bradley_terry(
            n_essays, fit.first, fit.second, fit.first_won, prior=prior, order_effect=True
        )
        return scale_separation_reliability(weak.theta, weak.se)
    except (ValueError, np.linalg.LinAlgError):  # all abilities equal: undefined
        return None


def component_sizes(n_essays: int, fit: BatchFit) -> list[int]:
    """Sizes of the connected groups of the success graph (one group: scores comparable)."""
    return [len(c) for c in connected_components(n_essays, fit.first, fit.second)]


def split_half(
    fit: BatchFit, n_essays: int, prior: float, splits: int, seed: list[int]
) -> float | None:
    """Mean corrected split-half reliability over ``splits`` random halves (fewer for large
    batches: :func:`splits_needed`), or None when it is undefined: too few comparisons, a
    half with constant scores, or a split correlation of exactly −1 (which happens with a
    handful of comparisons). It is a diagnostic; it never stops a batch."""
    if fit.successes < 4:
        return None
    try:
        value = split_half_reliability(
            n_essays,
            fit.first,
            fit.second,
            fit.first_won,
            prior=prior,
            n_splits=splits_needed(n_essays, splits),
            rng=seed,
            order_effect=True,
        )
    except (ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        log.warning("split-half reliability undefined for %d comparisons: %r", fit.successes, exc)
        return None
    return None if not np.isfinite(value) else float(value)


@dataclass(frozen=True)
class Ranking:
    essays: list[RankedEssay]
    rows: list[EssayResult]
    grade_message: str | None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def numeric_grade_scale(grades: Sequence[str]) -> list[str] | None:
    """Distinct grades sorted numerically when every one is a number, else None."""
    try:
        return sorted(set(grades), key=float)
    except ValueError:
        return None


def build_ranking(
    essays: Sequence[EssayRecord], fit: BatchFit, grade_scale: Sequence[str] | None
) -> Ranking:
    """Rank by score (highest first; ties by essay id), with wins, counts and, when anchors
    and a grade scale exist, each essay's most probable grade and its probability."""
    n = len(essays)
    counts = np.bincount(fit.first, minlength=n) + np.bincount(fit.second, minlength=n)
    wins = np.bincount(np.where(fit.first_won, fit.first, fit.second), minlength=n)
    se = np.nan_to_num(fit.se, nan=0.0)
    low, high = fit.interval95()
    grades: list[tuple[str, float]] | None = None
    message = None
    anchors = {e.position: e.anchor_grade for e in essays if e.anchor_grade is not None}
    if anchors and grade_scale:
        try:
            grades = project_grades(fit.theta, fit.se, anchors, list(grade_scale))
        except ValueError as exc:
            message = f"grades not projected: {exc}"
    order = sorted(essays, key=lambda e: (-float(fit.theta[e.position]), e.essay_id))
    ranked: list[RankedEssay] = []
    rows: list[EssayResult] = []
    for rank, e in enumerate(order, start=1):
        i = e.position
        grade, prob = grades[i] if grades is not None else (None, None)
        ranked.append(
            RankedEssay(
                essay_id=e.essay_id,
                rank=rank,
                score=float(fit.theta[i]),
                se=float(se[i]),
                lower95=_finite(low[i]),
                upper95=_finite(high[i]),
                comparisons=int(counts[i]),
                wins=int(wins[i]),
                is_anchor=e.anchor_grade is not None,
                anchor_grade=e.anchor_grade,
                projected_grade=grade,
                grade_probability=prob,
            )
        )
        rows.append(EssayResult(e.essay_id, rank, float(fit.theta[i]), float(se[i]), grade, prob))
    return Ranking(ranked, rows, message)
