"""Variances of sum-to-zero abilities: the estimator against the exact inverse, memory bounded."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from cjllm.cj import uncertainty
from cjllm.cj.reliability import scale_separation_reliability, splits_needed
from cjllm.cj.scoring import fit_bradley_terry, reference_coded
from cjllm.cj.uncertainty import ConvergenceError, sum_to_zero_variances

# The estimator's stated accuracy (docs/decisions.md): root-mean-square relative error of the
# standard errors at most TARGET (0.5%) on average; checked here with margin on single items.
RMS_TOLERANCE, MAX_TOLERANCE = 0.01, 0.05


def bt_information(n: int, per_item: int, prior: float, order: bool, seed: int) -> sp.csr_array:
    """Information matrix of a Bradley-Terry fit: every item in ``per_item`` comparisons
    (random perfect matchings), weights p(1 − p) of varied abilities, optional order effect
    (the last coordinate) and ridge ``prior``."""
    rng = np.random.default_rng(seed)
    pairs = np.concatenate([rng.permutation(n) for _ in range(per_item)]).reshape(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    theta = rng.normal(0.0, 1.5, n)
    p = 1.0 / (1.0 + np.exp(theta[b] - theta[a] - 0.3))
    w = p * (1.0 - p)
    size = n + 1 if order else n
    last = np.full(w.size, n)
    rows, cols, vals = [a, b, a, b], [b, a, a, b], [-w, -w, w, w]
    if order:
        rows += [a, last, b, last, last]
        cols += [last, a, last, b, last]
        vals += [w, w, -w, -w, w]
    info = sp.coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size)
    )
    return sp.csr_array(info + prior * sp.eye_array(size))


@pytest.mark.parametrize(
    ("per_item", "prior", "order"),
    [(6, 0.1, True), (10, 0.0, True), (24, 0.1, False)],  # sparse and dense graphs, ML and MAP
)
def test_estimated_standard_errors_agree_with_exact_ones(
    per_item: int, prior: float, order: bool
) -> None:
    info = bt_information(800, per_item, prior, order, seed=per_item)
    exact = sum_to_zero_variances(info, 800, exact=True)
    estimate = sum_to_zero_variances(info, 800, exact=False)
    assert exact.exact and not estimate.exact and estimate.covariance is None
    relative = np.sqrt(estimate.theta / exact.theta) - 1.0
    rms = float(np.sqrt(np.mean(relative**2)))
    assert rms <= RMS_TOLERANCE and np.max(np.abs(relative)) <= MAX_TOLERANCE
    assert estimate.error == pytest.approx(rms, rel=0.5)  # it knows how good it is
    np.testing.assert_allclose(estimate.other, exact.other, rtol=1e-5)  # order effect: exact


def test_exact_covariance_is_the_projected_inverse() -> None:
    """ML: P·(reference-coded inverse)·P; MAP: P·J⁻¹·P — whatever the coding, the same C."""
    n = 30
    for prior in (0.0, 0.5):
        info = bt_information(n, 4, prior, True, seed=3)
        dense = info.toarray()
        keep = np.arange(1 if prior == 0.0 else 0, n + 1)  # ML: drop item 0 (reference coding)
        sigma = np.zeros((n + 1, n + 1))
        sigma[np.ix_(keep, keep)] = np.linalg.inv(dense[np.ix_(keep, keep)])
        centre = np.eye(n) - 1.0 / n
        result = sum_to_zero_variances(info, n)
        assert result.covariance is not None
        np.testing.assert_allclose(result.covariance, centre @ sigma[:n, :n] @ centre, atol=1e-12)
        np.testing.assert_allclose(result.other, [sigma[n, n]], rtol=1e-12)


def test_estimator_never_allocates_a_dense_matrix() -> None:
    n = 6000  # a dense n×n float64 matrix would be 288 MB
    info = bt_information(n, 10, 0.1, True, seed=1)
    tracemalloc.start()
    try:
        estimate = sum_to_zero_variances(info, n, exact=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert estimate.probes >= 16 and np.all(estimate.theta > 0.0)
    assert peak < 8 * n * n / 20  # a twentieth of one dense matrix; in fact O(nnz + n·block)


def test_fit_estimates_standard_errors_when_asked_and_keeps_no_covariance() -> None:
    rng = np.random.default_rng(2)
    n = 600
    pairs = np.concatenate([rng.permutation(n) for _ in range(10)]).reshape(-1, 2)
    truth = rng.normal(0.0, 1.0, n)
    won = rng.random(len(pairs)) < 1 / (1 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]]))
    args = (n, pairs[:, 0], pairs[:, 1], won)
    exact = fit_bradley_terry(*args, prior=0.1, order_effect=True)
    estimated = fit_bradley_terry(*args, prior=0.1, order_effect=True, standard_errors="estimated")
    skipped = fit_bradley_terry(*args, prior=0.1, order_effect=True, standard_errors="none")
    assert exact.covariance is not None and exact.se_error == 0.0
    assert estimated.covariance is None and 0.0 < estimated.se_error <= uncertainty.TARGET
    np.testing.assert_array_equal(estimated.theta, exact.theta)
    np.testing.assert_allclose(estimated.se, exact.se, rtol=MAX_TOLERANCE)
    assert estimated.order_effect_se == pytest.approx(exact.order_effect_se, rel=1e-5)
    np.testing.assert_array_equal(skipped.theta, exact.theta)
    assert np.all(np.isnan(skipped.se)) and skipped.covariance is None
    with pytest.raises(ValueError, match="standard_errors='exact'"):
        reference_coded(estimated)


def test_information_must_cover_all_abilities() -> None:
    info = bt_information(50, 4, 0.0, False, seed=4)
    with pytest.raises(ValueError, match="not invariant to shifting all abilities"):
        sum_to_zero_variances(info[1:, 1:], 49)  # a reference-coded block


def test_disconnected_ml_information_is_refused_on_both_paths() -> None:
    one, two = bt_information(20, 4, 0.0, False, seed=5), bt_information(20, 4, 0.0, False, seed=6)
    info = sp.csr_array(sp.block_diag([one, two]))  # two groups never compared: K is singular
    with pytest.raises(np.linalg.LinAlgError):
        sum_to_zero_variances(info, 40, exact=True)
    with pytest.raises(ConvergenceError):
        sum_to_zero_variances(info, 40, exact=False)


# --- reliability at scale --------------------------------------------------------------------


def test_split_half_averages_fewer_splits_for_large_batches() -> None:
    assert [splits_needed(n, 10) for n in (40, 2_000, 5_000, 10_000, 100_000)] == [10, 10, 4, 2, 1]
    assert splits_needed(40, 3) == 3  # never more than asked


def test_scale_separation_reliability_from_estimated_errors_matches_exact() -> None:
    rng = np.random.default_rng(8)
    n = 700
    pairs = np.concatenate([rng.permutation(n) for _ in range(8)]).reshape(-1, 2)
    truth = rng.normal(0.0, 1.0, n)
    won = rng.random(len(pairs)) < 1 / (1 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]]))
    exact, estimated = (
        fit_bradley_terry(n, pairs[:, 0], pairs[:, 1], won, prior=0.1, standard_errors=se)
        for se in ("exact", "estimated")
    )
    assert scale_separation_reliability(estimated.theta, estimated.se) == pytest.approx(
        scale_separation_reliability(exact.theta, exact.se), abs=1e-3
    )
