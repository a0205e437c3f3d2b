"""The two judge models averaged from AVERAGE_FROM comparisons per essay (cj/model_average)."""

from __future__ import annotations

import numpy as np
import pytest

from cjllm.cj.model_average import AVERAGE_FROM, average, published, weighted_quantile
from cjllm.cj.posterior import Posterior, summarise


def run(centre: float, spread: float, eps: float, draws: int, seed: int) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """Kept draws of a chain over 6 essays: θ around ``centre``·(−1 … 1), ε fixed at ``eps``."""
    rng = np.random.default_rng(seed)
    theta = centre * np.linspace(-1.0, 1.0, 6) + rng.normal(0.0, spread, (draws, 6))
    rest = np.column_stack([rng.normal(0.1, 0.05, draws), np.full(draws, eps),
                            rng.normal(1.0 + spread, 0.1, draws)])  # fmt: skip
    return theta, rest


def models(p_lapse: float) -> tuple[Posterior, Posterior]:
    """A narrow clean run, and a lapse run whose share ``p_lapse`` of draws is at ε = 0.4
    (wide, stretched) and the rest at ε = 0 (as narrow as the clean run)."""
    clean = summarise(*run(1.0, 0.1, 0.0, 600, seed=1), lapse=False)
    high = round(600 * p_lapse)
    wide, wide_rest = run(3.0, 0.8, 0.4, high, seed=2)
    narrow, narrow_rest = run(1.0, 0.1, 0.0, 600 - high, seed=3)
    lapsing = summarise(np.concatenate([wide, narrow]), np.concatenate([wide_rest, narrow_rest]),
                        lapse=True)  # fmt: skip
    return clean, lapsing


def test_the_average_weights_each_model_by_its_probability() -> None:
    clean, lapsing = models(0.3)
    assert lapsing.lapse_probability == pytest.approx(0.3)
    mixed = average(clean, lapsing)
    np.testing.assert_allclose(mixed.theta, 0.7 * clean.theta + 0.3 * lapsing.theta)
    # the variance of a mixture: within each model and between their means
    var = 0.7 * clean.draws.var(axis=0) + 0.3 * lapsing.draws.var(axis=0)
    var += 0.7 * 0.3 * (clean.theta - lapsing.theta) ** 2
    np.testing.assert_allclose(mixed.se, np.sqrt(var))
    # 30% of the mass is the lapse model's wide draws: the top essay's 97.5% quantile lies
    # among them, far above anything the clean model drew
    assert mixed.high[-1] > clean.draws[:, -1].max() + 0.5
    assert clean.low[0] <= mixed.high[0] and mixed.low[-1] <= mixed.high[-1]
    # ε and P from the lapse run, δ from the clean one
    assert (mixed.lapse, mixed.lapse_probability) == (lapsing.lapse, lapsing.lapse_probability)
    assert mixed.order_effect == clean.order_effect
    assert min(clean.reliability, lapsing.reliability) <= mixed.reliability <= 1.0


def test_a_model_with_no_weight_is_left_out_whole() -> None:
    clean, lapsing = models(0.0)
    assert lapsing.lapse_probability == 0.0 and average(clean, lapsing) is clean
    clean, lapsing = models(1.0)
    assert average(clean, lapsing) is lapsing


def test_few_comparisons_per_essay_publish_the_more_probable_model_many_the_average() -> None:
    for p in (0.3, 0.7):
        clean, lapsing = models(p)
        chosen = published(clean, lapsing, AVERAGE_FROM - 0.5)
        assert chosen is (lapsing if p > 0.5 else clean)
        mixed = published(clean, lapsing, AVERAGE_FROM)
        np.testing.assert_allclose(mixed.theta, average(clean, lapsing).theta)
        assert mixed is not clean and mixed is not lapsing


def test_equal_weights_give_numpys_midpoint_quantiles() -> None:
    values = np.random.default_rng(4).normal(size=(101, 3))
    weights = np.full(101, 1 / 101)
    for q in (0.025, 0.5, 0.975):
        np.testing.assert_allclose(
            weighted_quantile(values, weights, q), np.quantile(values, q, axis=0, method="hazen")
        )
