"""The two judge models averaged: what a ranking with many comparisons per essay publishes.

The final fit samples two models (:mod:`cjllm.cj.posterior`): the clean judge (ε = 0) and the
lapse model (a judge that reverses at least ``posterior.LAPSE_FLOOR`` of its decisions at
random), with P, the posterior probability of the lapse model. Bayesian model averaging
publishes their mixture — the lapse model's draws with weight P, the clean model's with
weight 1 − P — instead of the more probable model alone.

Why only from :data:`AVERAGE_FROM` comparisons per essay (docs/judgement.md, "Averaging the
two models"): with fewer, P is mostly the ε prior's (a clean judge's mean P 0.14–0.29 at 6 and
10 comparisons per essay, against a prior 0.35), and a prior-weighted share of the lapse
model's wide, stretched draws pushes a clean judge's intervals over 97% coverage; the median
probability model (the more probable one alone) is calibrated there. With more, a clean
judge's P is the data's (≤ 0.02 in nine batches of ten at 20 per essay), and a lapsing judge
whose comparisons leave the choice open (P 0.1–0.5 in about one batch in eight at 100
essays, 20 per essay) is no longer scored wholly as a clean one: those batches' intervals
covered 0.55 of the truth under the choice and 0.85 averaged.
"""

from __future__ import annotations

import numpy as np

from cjllm.cj.likelihood import FloatArray
from cjllm.cj.posterior import INTERVAL, Posterior, draw_reliability

__all__ = ["AVERAGE_FROM", "average", "published", "weighted_quantile"]

AVERAGE_FROM = 15.0  # successful comparisons per essay from which the two models are averaged


def published(clean: Posterior, lapsing: Posterior, per_essay: float) -> Posterior:
    """What the final fit publishes given both runs and the batch's successful comparisons
    per essay: their :func:`average` from :data:`AVERAGE_FROM` on, else the more probable
    model (``lapsing`` when its ``lapse_probability`` exceeds ½: the median probability
    model; docs/judgement.md, "Which model")."""
    if per_essay >= AVERAGE_FROM:
        return average(clean, lapsing)
    return lapsing if lapsing.lapse_probability > 0.5 else clean


def average(clean: Posterior, lapsing: Posterior) -> Posterior:
    """The mixture of ``clean`` (weight 1 − P) and ``lapsing`` (weight P, its
    ``lapse_probability``), summarised as :func:`posterior.summarise` summarises one chain:
    the scores its mean, the SDs its SD, the interval its weighted 2.5% and 97.5% quantiles,
    the reliability its weighted mean of corr(scores, θ)², τ its weighted median; the order
    effect is the clean model's, ε's summaries the lapse model's."""
    p = lapsing.lapse_probability
    parts = [(d, w) for d, w in ((clean, 1.0 - p), (lapsing, p)) if w > 0.0]
    if len(parts) == 1:
        return parts[0][0]
    draws = np.concatenate([d.draws for d, _ in parts])
    weights = np.concatenate([np.full(len(d.draws), w / len(d.draws)) for d, w in parts])
    taus = np.concatenate([d.tau_draws for d, _ in parts])
    mean = weights @ draws
    return Posterior(
        theta=mean,
        se=np.sqrt(weights @ (draws - mean) ** 2),
        low=weighted_quantile(draws, weights, INTERVAL[0]),
        high=weighted_quantile(draws, weights, INTERVAL[1]),
        reliability=draw_reliability(draws, weights),
        order_effect=clean.order_effect,
        order_effect_se=clean.order_effect_se,
        lapse=lapsing.lapse,
        lapse_interval=lapsing.lapse_interval,
        lapse_probability=p,
        tau=float(weighted_quantile(taus[:, None], weights, 0.5)[0]),
        draws=draws,
        tau_draws=taus,
    )


def weighted_quantile(values: FloatArray, weights: FloatArray, q: float) -> FloatArray:
    """Per column of ``values`` (draws × essays), the ``q``-quantile of the weighted draws:
    the weighted empirical distribution function, interpolated between the draws' mid-weights
    (with equal weights, numpy's "hazen" quantile)."""
    order = np.argsort(values, axis=0)
    ordered = np.take_along_axis(values, order, axis=0)
    w = weights[order]
    mids = (np.cumsum(w, axis=0) - w / 2.0) / w.sum(axis=0)
    columns = [np.interp(q, mids[:, j], ordered[:, j]) for j in range(values.shape[1])]
    return np.asarray(columns, dtype=np.float64)
