"""The τ search on the evidence's slope finds what the bounded Brent search on the evidence
found: the slope is the evidence's derivative, and on random, adaptive and sparse designs of
40, 200 and 1,000 essays the chosen τ, the round fit's scores and SEs equal those of the
previous search (reproduced here) within its tolerance, 0.01 in log τ. Above
``SLOPE_LIMIT`` essays the default is still the Brent search, unchanged."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from cjllm.cj import population
from cjllm.cj.likelihood import LogPosterior, newton
from cjllm.cj.population import TAU_BOUNDS, fit_population, fit_spread
from cjllm.cj.scoring import BTFit, fit_bradley_terry
from cjllm.cj.tau_search import evidence_slope

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def design(kind: str, n: int, per_item: int, seed: int) -> Data:
    """Abilities N(0, 1.5²), a +0.4 first-position effect. ``random``: balanced random pairs;
    ``adaptive``: each essay against its neighbours in a noisy ordering (close pairs, as
    adaptive pairing makes); ``sparse``: random pairs, two per essay."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, n)
    if kind == "adaptive":
        pairs = []
        for _ in range(per_item // 2):
            order = np.argsort(truth + rng.normal(0.0, 0.7, n))
            pairs.extend(itertools.pairwise(order))
            pairs.extend(zip(order[:-2:2], order[2::2], strict=True))
        pairs_array = rng.permutation(np.array(pairs))
    else:
        per = 2 if kind == "sparse" else per_item
        pairs_array = np.concatenate([rng.permutation(n) for _ in range(per)]).reshape(-1, 2)
    eta = truth[pairs_array[:, 0]] - truth[pairs_array[:, 1]] + 0.4
    won = rng.random(len(pairs_array)) < 1.0 / (1.0 + np.exp(-eta))
    return pairs_array[:, 0], pairs_array[:, 1], won


def brent_spread(n: int, data: Data, xtol: float = 0.01) -> BTFit:
    """The previous τ search: bounded Brent on minus the evidence in log τ, each fit from the
    last, then the fit with SEs at the τ found."""
    fits: dict[float, BTFit] = {}
    start: BTFit | None = None

    def negative(log_tau: float) -> float:
        nonlocal start
        if log_tau not in fits:
            fits[log_tau] = start = fit_bradley_terry(
                n, *data, prior=math.exp(-2.0 * log_tau), order_effect=True, order_prior=0.1,
                initial=start, standard_errors="evidence",
            )  # fmt: skip
        evidence = fits[log_tau].log_evidence
        assert evidence is not None
        return -evidence

    bounds = (math.log(TAU_BOUNDS[0]), math.log(TAU_BOUNDS[1]))
    best = minimize_scalar(negative, bounds=bounds, method="bounded", options={"xatol": xtol})
    negative(float(best.x))
    found = fits[float(best.x)]
    return fit_bradley_terry(
        n, *data, prior=found.prior, order_effect=True, order_prior=0.1, initial=found
    )


@pytest.mark.parametrize("order", [True, False])
def test_slope_is_the_derivative_of_the_evidence_in_log_tau(order: bool) -> None:
    f, s, y = design("random", 40, 6, seed=3)

    def at(log_tau: float) -> tuple[float, float]:
        problem = LogPosterior(
            40, f, s, y, order=order, prior=math.exp(-2.0 * log_tau), order_prior=0.1
        )
        z, _, _ = newton(problem, np.zeros(41), 100, 1e-12)
        slope = evidence_slope(problem, z)
        return slope.evidence, slope.slope

    for log_tau in (-0.5, 0.3, 1.0):
        h = 1e-4
        central = (at(log_tau + h)[0] - at(log_tau - h)[0]) / (2.0 * h)
        assert at(log_tau)[1] == pytest.approx(central, rel=1e-6, abs=1e-6)
        reference = fit_bradley_terry(
            40, f, s, y, prior=math.exp(-2.0 * log_tau), order_effect=order, order_prior=0.1
        )
        assert at(log_tau)[0] == pytest.approx(reference.log_evidence, abs=1e-9)


DESIGNS = [("random", 40, 10), ("adaptive", 40, 10), ("sparse", 40, 2), ("random", 200, 10),
           ("adaptive", 200, 10), ("sparse", 200, 2), ("adaptive", 1000, 10)]  # fmt: skip


@pytest.mark.parametrize(("kind", "n", "per_item"), DESIGNS)
def test_slope_search_finds_the_tau_of_the_brent_search(kind: str, n: int, per_item: int) -> None:
    data = design(kind, n, per_item, seed=n + per_item)
    previous, found = brent_spread(n, data), fit_spread(n, *data, search="slope")
    tight = brent_spread(n, data, xtol=1e-6)
    log_tau = -0.5 * math.log(found.prior)
    assert abs(log_tau + 0.5 * math.log(previous.prior)) <= 0.01  # the previous tolerance
    assert abs(log_tau + 0.5 * math.log(tight.prior)) <= 0.002  # and nearer the maximum
    assert found.log_evidence is not None and previous.log_evidence is not None
    assert found.log_evidence >= previous.log_evidence - 1e-3
    se = np.asarray(previous.se)
    assert np.all(np.abs(found.theta - previous.theta) <= 0.01 * se)
    assert np.allclose(found.se, previous.se, rtol=0.005, atol=0)


@pytest.mark.parametrize(("kind", "n", "per_item"), DESIGNS[:6])
def test_round_fit_equals_the_one_from_the_brent_search(
    kind: str, n: int, per_item: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit_population with the slope search against the same with the Brent search (its
    fallback, forced here): scores within 0.01 SE, SEs within 0.5%, reliability 0.002."""
    data = design(kind, n, per_item, seed=n + per_item)
    found = fit_population(n, *data, order_prior=0.1)
    monkeypatch.setattr(population, "_slope_search", lambda *args, **kwargs: None)
    previous = fit_population(n, *data, order_prior=0.1)
    assert found.tau is not None and previous.tau is not None
    assert abs(math.log(found.tau / previous.tau)) <= 0.01
    assert np.all(np.abs(found.theta - previous.theta) <= 0.01 * previous.se)
    assert np.allclose(found.se, previous.se, rtol=0.005, atol=0)
    assert found.reliability == pytest.approx(previous.reliability, abs=0.002)


def test_above_the_slope_limit_the_search_is_brents() -> None:
    n = population.SLOPE_LIMIT + 1
    data = design("random", n, 4, seed=9)
    assert fit_spread(n, *data).prior == brent_spread(n, data).prior


def test_slope_search_stops_at_the_bound_the_evidence_rises_towards() -> None:
    """Essays judged by coin tosses: the evidence rises as τ falls; both searches end at the
    lower bound."""
    rng = np.random.default_rng(6)
    pairs = np.concatenate([rng.permutation(30) for _ in range(6)]).reshape(-1, 2)
    data = (pairs[:, 0], pairs[:, 1], rng.random(len(pairs)) < 0.5)
    found = fit_spread(30, *data)
    assert -0.5 * math.log(found.prior) == pytest.approx(math.log(TAU_BOUNDS[0]), abs=0.01)
    assert found.prior == pytest.approx(brent_spread(30, data).prior, rel=0.02)
