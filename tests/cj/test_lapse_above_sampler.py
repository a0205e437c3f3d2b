"""The final fit between the sampler's limit and 1,000 essays: the lapse chain decides the
model (cj/ranking.py, ``final_fit``; docs/judgement.md, "Above 400 essays")."""

from __future__ import annotations

import numpy as np

from cjllm.cj.completion import lapse_warning
from cjllm.cj.options import BatchOptions
from cjllm.cj.posterior import SAMPLER_LIMIT
from cjllm.cj.ranking import Z95, BatchFit, final_fit, fit_outcomes
from cjllm.cj.records import EssayRecord, PairOutcome
from cjllm.cj.tables import ComparisonStatus

N = 450  # above posterior.SAMPLER_LIMIT


def batch(flip: float, seed: int) -> tuple[np.ndarray, list[EssayRecord], list[PairOutcome]]:
    """Random pairs, 10 comparisons per essay, judged by a logistic judge over abilities
    N(0, 1.5²) that flips a share ``flip`` of its decisions."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, N)
    pairs = np.concatenate([rng.permutation(N) for _ in range(10)]).reshape(-1, 2)
    won = rng.random(len(pairs)) < 1.0 / (1.0 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]]))
    won = np.where(rng.random(len(pairs)) < flip, ~won, won)
    essays = [EssayRecord(f"e{i:03d}", i, "", None) for i in range(N)]
    done = ComparisonStatus.SUCCEEDED
    outcomes = [
        PairOutcome(f"e{a:03d}", f"e{b:03d}", done, "Essay A" if w else "Essay B", 1, 1)
        for (a, b), w in zip(pairs.tolist(), won.tolist(), strict=True)
    ]
    return truth - truth.mean(), essays, outcomes


def coverage(fit: BatchFit, truth: np.ndarray) -> float:
    low, high = fit.interval95()
    return float(np.mean((low <= truth) & (truth <= high)))


def test_a_flipping_judge_above_the_sampler_limit_is_scored_with_the_lapse_model() -> None:
    """Seed 3, 20% of decisions flipped (ε = 0.4): the round fit (ε = 0, what was published
    above 400 essays before) has a compressed scale and intervals that miss the truth for
    half the essays; the final fit publishes the lapse model's draws."""
    assert N > SAMPLER_LIMIT
    truth, essays, outcomes = batch(0.2, seed=3)
    options = BatchOptions()
    rounds = fit_outcomes(essays, outcomes, options)
    final = final_fit(essays, outcomes, options, fit=rounds)
    assert final.sampled and final.scored_with_lapse
    assert final.lapse_probability is not None and final.lapse_probability > 0.5
    assert final.lapse_interval is not None
    assert final.lapse_interval[0] <= 0.4 <= final.lapse_interval[1]
    # a wider scale and wider intervals: the informed decisions' scale
    assert np.std(final.theta) > 1.3 * np.std(rounds.theta)
    width = np.mean(np.subtract(*final.interval95()[::-1]))
    assert width > 1.3 * np.mean(2 * Z95 * rounds.se)
    assert coverage(rounds, truth) < 0.7 <= 0.9 <= coverage(final, truth)
    r2 = np.corrcoef(final.theta, truth)[0, 1] ** 2
    assert final.reliability is not None and abs(final.reliability - r2) < 0.08
    # and the user is told, with the rate and its interval
    warning = lapse_warning(final)
    assert warning is not None and "decide at random" in warning and "account for it" in warning
    assert f"{final.lapse_rate:.0%}" in warning


def test_a_clean_judge_above_the_sampler_limit_keeps_the_round_fit() -> None:
    truth, essays, outcomes = batch(0.0, seed=3)
    options = BatchOptions()
    rounds = fit_outcomes(essays, outcomes, options)
    final = final_fit(essays, outcomes, options, fit=rounds)
    assert final.sampled and not final.scored_with_lapse
    assert final.lapse_probability is not None and final.lapse_probability <= 0.5
    assert final.theta is rounds.theta and final.se is rounds.se
    assert final.reliability == rounds.reliability and final.low is None
    assert final.lapse_interval is not None and final.lapse_interval[1] < 0.2
    assert coverage(final, truth) >= 0.9
    assert lapse_warning(final) is None  # nothing to warn about
