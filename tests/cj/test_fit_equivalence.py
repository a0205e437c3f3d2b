"""The cheap fit paths give what the reference paths give: dense information equals the sparse
one, the evidence-only fit equals the full fit's evidence, dense and sparse variances agree,
the round fit reproduces the figures the previous implementation produced, and the sampler's
scale moves leave the posterior it samples unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from cjllm.cj.likelihood import LogPosterior
from cjllm.cj.population import fit_population, fit_spread
from cjllm.cj.posterior import RESCALES, Posterior, sample_posterior
from cjllm.cj.scoring import fit_bradley_terry
from cjllm.cj.uncertainty import sum_to_zero_variances

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def judged(n: int, per_item: int, seed: int, lapse: float = 0.0) -> Data:
    """Balanced random pairs, abilities N(0, 1.5²), a +0.4 first-position effect."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, n)
    pairs = np.concatenate([rng.permutation(n) for _ in range(per_item)]).reshape(-1, 2)
    eta = truth[pairs[:, 0]] - truth[pairs[:, 1]] + 0.4
    p_first = lapse / 2 + (1 - lapse) / (1.0 + np.exp(-eta))
    return pairs[:, 0], pairs[:, 1], rng.random(len(pairs)) < p_first


@pytest.mark.parametrize(("prior", "order"), [(0.0, True), (0.3, False), (0.3, True)])
def test_dense_information_equals_the_sparse_one(prior: float, order: bool) -> None:
    f, s, y = judged(25, 6, seed=1)
    problem = LogPosterior(25, f, s, y, order=order, prior=prior, order_prior=0.1)
    z = np.random.default_rng(2).normal(0.0, 1.0, 26)
    w = problem.weights(z)
    sparse = problem.information(w).toarray()
    assert np.allclose(problem.dense_information(w), sparse, rtol=0, atol=1e-12)
    kept = problem.dense_information(w, problem.free)
    assert np.allclose(kept, sparse[np.ix_(problem.free, problem.free)], rtol=0, atol=1e-12)


def test_evidence_only_fit_has_the_full_fits_estimates_and_evidence() -> None:
    data = judged(40, 8, seed=3)
    full = fit_bradley_terry(40, *data, prior=0.5, order_effect=True, order_prior=0.1)
    cheap = fit_bradley_terry(
        40, *data, prior=0.5, order_effect=True, order_prior=0.1, standard_errors="evidence"
    )
    assert full.log_evidence is not None and cheap.log_evidence is not None
    assert cheap.log_evidence == pytest.approx(full.log_evidence, abs=1e-9)
    assert np.allclose(cheap.theta, full.theta, rtol=0, atol=1e-12)
    assert np.isnan(cheap.se).all() and cheap.covariance is None


def test_dense_and_sparse_information_give_the_same_variances() -> None:
    f, s, y = judged(30, 6, seed=4)
    problem = LogPosterior(30, f, s, y, order=True, prior=0.2, order_prior=0.1)
    w = problem.weights(np.zeros(31))
    dense = sum_to_zero_variances(problem.dense_information(w), 30)
    sparse = sum_to_zero_variances(problem.information(w), 30)
    assert dense.covariance is not None and sparse.covariance is not None
    assert np.allclose(dense.covariance, sparse.covariance, rtol=0, atol=1e-13)
    assert np.allclose(dense.other, sparse.other, rtol=0, atol=1e-13)
    assert dense.log_det == pytest.approx(sparse.log_det, abs=1e-10)
    with pytest.raises(ValueError, match="not invariant"):
        sum_to_zero_variances(problem.dense_information(w)[:, ::-1].copy(), 30)


def test_spread_fit_carries_the_standard_errors_of_a_full_fit_at_its_prior() -> None:
    data = judged(40, 6, seed=5)
    best = fit_spread(40, *data)
    direct = fit_bradley_terry(40, *data, prior=best.prior, order_effect=True, order_prior=0.1)
    assert np.allclose(best.theta, direct.theta, rtol=0, atol=1e-9)
    assert np.allclose(best.se, direct.se, rtol=0, atol=1e-9)
    assert best.log_evidence == pytest.approx(direct.log_evidence, abs=1e-9)


# fit_population on these data, as computed by the implementation before the
# round fits were made cheap (sparse information, full SEs at every step of the τ search)
REFERENCE_THETA = [
    0.0879043210026, 1.65988244778, 3.33916580988, -0.336375968706, -2.62556301463,
    -1.60670406133, -0.625582620983, -0.396972417963, 0.609067323721, -3.14086361105,
    3.2857880244, -0.249746232129,
]  # fmt: skip
REFERENCE_SE = [
    1.12401419896, 2.03880702956, 2.20910915267, 1.37085621801, 1.98897003172, 1.9329224103,
    1.2490796239, 1.20084469709, 1.24604155227, 2.45439178612, 2.36468876156, 1.13406517949,
]  # fmt: skip


def test_round_fit_reproduces_the_previous_implementation() -> None:
    """Since the τ search follows the evidence's slope (:mod:`cjllm.cj.tau_search`) the τ is
    the previous bounded Brent search's to within its tolerance (0.01 in log τ): scores move
    by less than 0.005 SE, SEs by less than 0.5% (tests/cj/test_tau_search.py)."""
    fit = fit_population(12, *judged(12, 6, seed=11), order_prior=0.1)
    se = np.asarray(REFERENCE_SE)
    assert np.all(np.abs(fit.theta - REFERENCE_THETA) <= 0.005 * se)
    assert np.allclose(fit.se, REFERENCE_SE, rtol=0.005, atol=0)
    assert fit.reliability == pytest.approx(0.764174829405526, abs=0.001)
    assert fit.tau is not None and abs(np.log(fit.tau / 2.803025570170704)) <= 0.01
    assert fit.fit.order_effect == pytest.approx(1.2441409846227292, abs=0.005 * 0.629)
    assert fit.fit.order_effect_se == pytest.approx(0.6289966571265869, rel=0.005)


@pytest.mark.parametrize("lapse", [False, True])
def test_scale_moves_leave_the_sampled_posterior_unchanged(lapse: bool) -> None:
    """The published sampler (with scale moves) and the plain Gibbs sampler (none), both run
    long on the same comparisons, give the same posterior: scores, SDs, τ, δ, reliability
    and P(ε > 0) agree within Monte Carlo error, summarised at ``floor`` 0.05 (the draws
    with ε > 0: P(ε ≥ 0.2) is ~0.1 on these 48 comparisons, too few draws to compare SDs).
    (A wrong Jacobian in the scale move, c^14 instead of c², moves the scores by ~9 SDs.)"""
    f, s, y = judged(12, 8, seed=21, lapse=0.3 if lapse else 0.0)
    start = fit_population(12, f, s, y, order_prior=0.1)
    theta, tau = np.asarray(start.theta), start.tau or 1.0

    def run(seed: int, rescales: int) -> Posterior:
        return sample_posterior(
            12, f, s, y, order_prior=0.1, start_theta=theta, start_order=0.0, start_tau=tau,
            seed=[seed], draws=4000, burn_in=200, lapse=lapse, rescales=rescales, floor=0.05,
        )  # fmt: skip

    moved, plain = run(1, RESCALES[lapse]), run(2, 0)
    assert np.allclose(moved.theta, plain.theta, rtol=0, atol=0.3 * float(plain.se.mean()))
    assert np.allclose(moved.se, plain.se, rtol=0.2, atol=0)
    assert moved.tau == pytest.approx(plain.tau, rel=0.12)
    assert abs(moved.order_effect - plain.order_effect) <= 0.2 * plain.order_effect_se
    assert moved.reliability == pytest.approx(plain.reliability, abs=0.04)
    assert moved.lapse_probability == pytest.approx(plain.lapse_probability, abs=0.1)
