"""Bradley-Terry scoring against the published oracle results, plus behaviour on bad graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cjllm.cj import likelihood, scoring
from cjllm.cj.grades import project_grades
from cjllm.cj.population import fit_population, fit_spread, population_sd
from cjllm.cj.reliability import scale_separation_reliability, split_half_reliability
from cjllm.cj.scoring import (
    DisconnectedGraphError,
    UnboundedEstimateError,
    connected_components,
    fit_bradley_terry,
    reference_coded,
)

Data = tuple[np.ndarray, np.ndarray, np.ndarray]

# Journal citations (Stigler 1994, via Agresti, Categorical Data Analysis, 2002, p. 438):
# player1 player2 wins1 wins2, the classic Bradley-Terry example.
JOURNALS = ["Biometrika", "CommStatist", "JASA", "JRSS-B"]
JOURNAL_TABLE = [
    ("Biometrika", "CommStatist", 730, 33),
    ("Biometrika", "JASA", 498, 320),
    ("Biometrika", "JRSS-B", 221, 284),
    ("CommStatist", "JASA", 68, 813),
    ("CommStatist", "JRSS-B", 17, 276),
    ("JASA", "JRSS-B", 142, 325),
]

# Section B: 1987 American League East, home team first ("Essay A").
BASEBALL_TEXT = """
Mil-Det 4-3  Mil-Tor 4-2  Mil-NY 4-3  Mil-Bos 6-1  Mil-Cle 4-2  Mil-Bal 6-0
Det-Mil 3-3  Det-Tor 4-2  Det-NY 4-3  Det-Bos 6-0  Det-Cle 6-1  Det-Bal 4-3
Tor-Mil 2-5  Tor-Det 4-3  Tor-NY 2-4  Tor-Bos 4-3  Tor-Cle 4-2  Tor-Bal 6-0
NY-Mil 3-3   NY-Det 5-1   NY-Tor 2-5  NY-Bos 4-3   NY-Cle 4-2   NY-Bal 6-1
Bos-Mil 5-1  Bos-Det 2-5  Bos-Tor 3-3 Bos-NY 4-2   Bos-Cle 5-2  Bos-Bal 6-0
Cle-Mil 2-5  Cle-Det 3-3  Cle-Tor 3-4 Cle-NY 4-3   Cle-Bos 4-2  Cle-Bal 2-4
Bal-Mil 2-5  Bal-Det 1-5  Bal-Tor 1-6 Bal-NY 2-4   Bal-Bos 1-6  Bal-Cle 3-4
"""
TEAMS = ["Bal", "Bos", "Cle", "Det", "Mil", "NY", "Tor"]  # Baltimore first: the reference


def expand(table: list[tuple[str, str, int, int]], names: list[str]) -> Data:
    """One comparison per game/citation: (first, second, first_won)."""
    first: list[int] = []
    second: list[int] = []
    won: list[bool] = []
    for a, b, wins_a, wins_b in table:
        first += [names.index(a)] * (wins_a + wins_b)
        second += [names.index(b)] * (wins_a + wins_b)
        won += [True] * wins_a + [False] * wins_b
    return np.array(first), np.array(second), np.array(won)


def baseball() -> Data:
    tokens = BASEBALL_TEXT.split()
    table = []
    for teams, score in zip(tokens[::2], tokens[1::2], strict=True):
        home, away = teams.split("-")
        home_wins, away_wins = score.split("-")
        table.append((home, away, int(home_wins), int(away_wins)))
    assert len(table) == 42
    return expand(table, TEAMS)


def assert_published(actual: float, published: str) -> None:
    """Equal to the published figure at its printed precision (at least 4 dp here)."""
    decimals = len(published.split(".")[1])
    tolerance = 0.5 * 10.0**-decimals + 1e-12
    assert abs(actual - float(published)) <= tolerance, (actual, published)


def check_table(names: list[str], values: np.ndarray, published: dict[str, tuple[str, str]],
                ses: np.ndarray) -> None:  # fmt: skip
    for name, (estimate, se) in published.items():
        assert_published(float(values[names.index(name)]), estimate)
        assert_published(float(ses[names.index(name)]), se)


# --- A. journal citations ---------------------------------------------------------------


def journal_fit() -> scoring.BTFit:
    return fit_bradley_terry(4, *expand(JOURNAL_TABLE, JOURNALS))


def test_journals_reference_biometrika() -> None:
    theta, se = reference_coded(journal_fit(), reference=0)
    published = {
        "CommStatist": ("-2.9490725", "0.10254534"),
        "JASA": ("-0.4795698", "0.06058873"),
        "JRSS-B": ("0.2689541", "0.07082997"),
    }
    check_table(JOURNALS, theta, published, se)
    assert theta[0] == 0.0 and se[0] == 0.0


def test_journals_reference_jasa() -> None:
    theta, se = reference_coded(journal_fit(), reference=JOURNALS.index("JASA"))
    published = {
        "Biometrika": ("0.4795698", "0.06058873"),
        "CommStatist": ("-2.4695027", "0.09817049"),
        "JRSS-B": ("0.7485238", "0.07294356"),
    }
    check_table(JOURNALS, theta, published, se)


def test_journals_sum_to_zero() -> None:
    fit = journal_fit()
    published = {
        "Biometrika": ("0.7899221", "0.04333047"),
        "CommStatist": ("-2.1591504", "0.07257974"),
        "JASA": ("0.3103523", "0.04164102"),
        "JRSS-B": ("1.0588761", "0.05304699"),
    }
    check_table(JOURNALS, fit.theta, published, fit.se)
    assert abs(fit.theta.sum()) < 1e-12
    assert fit.converged and fit.order_effect is None and fit.order_effect_se is None


# --- B. baseball ---------------------------------------------------------------------------


def test_baseball_without_order_effect() -> None:
    fit = fit_bradley_terry(7, *baseball())
    theta, se = reference_coded(fit, reference=0)
    published = {
        "Bos": ("1.1077", "0.3339"),
        "Cle": ("0.6839", "0.3319"),
        "Det": ("1.4364", "0.3396"),
        "Mil": ("1.5814", "0.3433"),
        "NY": ("1.2476", "0.3359"),
        "Tor": ("1.2945", "0.3367"),
    }
    check_table(TEAMS, theta, published, se)
    assert_published(fit.null_deviance, "78.015")
    assert_published(fit.deviance, "44.053")
    assert fit.df_residual == 36
    assert fit.df_residual + 6 == 42  # null model: 42 home-away groups, no parameters


def test_baseball_with_home_advantage() -> None:
    fit = fit_bradley_terry(7, *baseball(), order_effect=True)
    theta, se = reference_coded(fit, reference=0)
    published = {
        "Bos": ("1.1438", "0.3378"),
        "Cle": ("0.7047", "0.3350"),
        "Det": ("1.4754", "0.3446"),
        "Mil": ("1.6196", "0.3474"),
        "NY": ("1.2813", "0.3404"),
        "Tor": ("1.3271", "0.3403"),
    }
    check_table(TEAMS, theta, published, se)
    assert fit.order_effect is not None and fit.order_effect_se is not None
    assert_published(fit.order_effect, "0.3023")
    assert_published(fit.order_effect_se, "0.1309")
    assert_published(fit.deviance, "38.643")
    assert fit.df_residual == 35


def test_agresti_normalised_abilities() -> None:
    # Agresti's Table 10.11 is the home-advantage fit (the plain fit gives .045, .089, ...).
    fit = fit_bradley_terry(7, *baseball(), order_effect=True)
    strength = np.exp(fit.theta) / np.exp(fit.theta).sum()
    published = {"Bal": "0.044", "Cle": "0.088", "Bos": "0.137", "NY": "0.157"}
    published |= {"Tor": "0.164", "Det": "0.190", "Mil": "0.220"}
    for team, value in published.items():
        assert_published(float(strength[TEAMS.index(team)]), value)
    assert [TEAMS[i] for i in np.argsort(strength)] == list(published)


# --- regularisation, solver paths ------------------------------------------------------------


def test_map_fit_is_stationary_and_tends_to_ml() -> None:
    first, second, won = baseball()
    ml = fit_bradley_terry(7, first, second, won, order_effect=True)
    for prior in (0.5, 2.0):
        fit = fit_bradley_terry(7, first, second, won, prior=prior, order_effect=True)
        assert fit.order_effect is not None
        eta = fit.theta[first] - fit.theta[second] + fit.order_effect
        residual = won - 1.0 / (1.0 + np.exp(-eta))
        score = np.bincount(first, residual, 7) - np.bincount(second, residual, 7)
        np.testing.assert_allclose(score, prior * fit.theta, atol=1e-9)  # ∇ log-posterior = 0
        assert residual.sum() == pytest.approx(prior * fit.order_effect, abs=1e-9)
        assert np.all(np.abs(fit.theta) < np.abs(ml.theta) + 1e-12)  # shrunk towards 0
        assert np.all(fit.se < ml.se)
    tiny = fit_bradley_terry(7, first, second, won, prior=1e-9, order_effect=True)
    np.testing.assert_allclose(tiny.theta, ml.theta, atol=1e-6)
    np.testing.assert_allclose(tiny.se, ml.se, atol=1e-6)


@pytest.mark.parametrize(("prior", "order"), [(0.0, False), (0.0, True), (0.3, True)])
def test_sparse_and_dense_newton_agree(
    monkeypatch: pytest.MonkeyPatch, prior: float, order: bool
) -> None:
    rng = np.random.default_rng(5)
    n = 500
    pairs = np.concatenate([rng.permutation(n) for _ in range(16)]).reshape(-1, 2)
    truth = rng.normal(0.0, 0.4, n)
    won = rng.random(len(pairs)) < 1 / (1 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]] - 0.3))
    sparse = fit_bradley_terry(n, pairs[:, 0], pairs[:, 1], won, prior=prior, order_effect=order)
    monkeypatch.setattr(likelihood, "DENSE_LIMIT", 10**9)
    dense = fit_bradley_terry(n, pairs[:, 0], pairs[:, 1], won, prior=prior, order_effect=order)
    assert sparse.converged and dense.converged
    np.testing.assert_allclose(sparse.theta, dense.theta, atol=1e-8)
    np.testing.assert_allclose(sparse.se, dense.se, atol=1e-10)
    assert np.all(sparse.se > 0)


# --- graphs without ML estimates -------------------------------------------------------------


def test_disconnected_graph() -> None:
    first, second = np.array([0, 1, 3, 4, 1]), np.array([1, 2, 4, 3, 0])
    won = np.array([True, False, True, True, False])
    assert connected_components(6, first, second) == [[0, 1, 2], [3, 4], [5]]
    assert connected_components(3, [0, 1], [1, 2]) == [[0, 1, 2]]
    with pytest.raises(DisconnectedGraphError) as caught:
        fit_bradley_terry(6, first, second, won)
    assert caught.value.components == [[0, 1, 2], [3, 4], [5]]
    assert "3 connected components" in str(caught.value)
    fit = fit_bradley_terry(6, first, second, won, prior=1.0)
    assert fit.converged and np.all(np.isfinite(fit.theta)) and np.all(fit.se > 0)
    assert fit.theta[5] == pytest.approx(0.0, abs=1e-12)  # unseen item: the prior mean
    assert fit.se[5] > fit.se[0]


def test_perfect_separation() -> None:
    # item 2 beat everyone; 0 and 1 split their games
    first, second = np.array([0, 1, 2, 2, 0]), np.array([1, 0, 0, 1, 2])
    won = np.array([True, True, True, True, False])
    with pytest.raises(UnboundedEstimateError) as caught:
        fit_bradley_terry(3, first, second, won)
    assert caught.value.items == [2]
    fit = fit_bradley_terry(3, first, second, won, prior=0.5)
    assert fit.converged and int(np.argmax(fit.theta)) == 2 and np.all(fit.se > 0)


def test_group_separation_without_extreme_items() -> None:
    # {0, 1} always beat {2, 3}; inside each group results go both ways
    first = np.array([0, 1, 2, 3, 0, 1, 0, 1])
    second = np.array([1, 0, 3, 2, 2, 3, 3, 2])
    won = np.ones(8, dtype=bool)
    with pytest.raises(UnboundedEstimateError, match="group of items"):
        fit_bradley_terry(4, first, second, won)
    fit = fit_bradley_terry(4, first, second, won, prior=1.0)
    assert fit.converged and min(fit.theta[:2]) > max(fit.theta[2:])


def test_order_effect_unbounded_when_essay_a_always_wins() -> None:
    first, second = np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2])
    won = np.ones(4, dtype=bool)  # the win graph 0>1>2>0 is fine, only δ diverges
    fit_bradley_terry(3, first, second, won)
    with pytest.raises(UnboundedEstimateError, match="Essay A won every comparison"):
        fit_bradley_terry(3, first, second, won, order_effect=True)
    fit = fit_bradley_terry(3, first, second, won, prior=1.0, order_effect=True)
    assert fit.order_effect is not None and fit.order_effect > 0


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="itself"):
        fit_bradley_terry(3, [0, 1], [0, 2], [True, False])
    with pytest.raises(ValueError, match="range"):
        fit_bradley_terry(3, [0, 3], [1, 2], [True, False])
    with pytest.raises(ValueError, match="boolean"):
        fit_bradley_terry(3, [0, 1], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="prior"):
        fit_bradley_terry(3, [0, 1], [1, 2], [True, False], prior=-1.0)


# --- reliability ----------------------------------------------------------------------------


def simulate(n: int, sd: float, per_item: int, seed: int) -> tuple[np.ndarray, Data]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, sd, n)
    pairs = np.concatenate([rng.permutation(n) for _ in range(per_item)]).reshape(-1, 2)
    p_first = 1.0 / (1.0 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]]))
    return truth, (pairs[:, 0], pairs[:, 1], rng.random(len(pairs)) < p_first)


def test_ssr_formula_and_convention() -> None:
    theta, se = np.array([-1.0, 0.0, 1.0]), np.array([0.5, 0.5, 0.5])
    assert scale_separation_reliability(theta, se) == pytest.approx((2 / 3 - 0.25) / (2 / 3))
    with pytest.raises(ValueError, match="zero variance"):
        scale_separation_reliability([0.0, 0.0], [1.0, 1.0])


def test_reliability_high_with_clean_data_and_low_with_noise() -> None:
    _, clean = simulate(40, 2.5, 60, seed=1)
    fit = fit_bradley_terry(40, *clean, prior=0.1)
    assert scale_separation_reliability(fit.theta, fit.se) > 0.95
    assert split_half_reliability(40, *clean, prior=0.1, n_splits=5, rng=1) > 0.95

    _, noise = simulate(40, 0.0, 6, seed=2)  # every item equal: all differences are noise
    fit = fit_bradley_terry(40, *noise, prior=0.1)
    assert scale_separation_reliability(fit.theta, fit.se) < 0.3
    assert split_half_reliability(40, *noise, prior=0.1, n_splits=10, rng=2) < 0.3


def test_split_half_is_reproducible_and_needs_a_prior() -> None:
    _, data = simulate(30, 1.5, 10, seed=3)
    one = split_half_reliability(30, *data, prior=0.5, n_splits=4, rng=7)
    assert one == split_half_reliability(30, *data, prior=0.5, n_splits=4, rng=7)
    with pytest.raises(ValueError, match="prior > 0"):
        split_half_reliability(30, *data, prior=0.0)


# --- grade projection -----------------------------------------------------------------------


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_project_grades() -> None:
    theta = np.array([-2.0, -1.8, 0.0, 2.0, 0.1, -3.0, 0.9])
    se = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.5, 2.0])
    anchors = {0: "C", 1: "C", 2: "B", 3: "A"}
    result = project_grades(theta, se, anchors, ["E", "D", "C", "B", "A"])
    low, high = (-1.9 + 0.0) / 2, (0.0 + 2.0) / 2  # midpoints of anchor means -1.9, 0, 2
    grade, probability = result[4]
    assert grade == "B"
    assert probability == pytest.approx(
        normal_cdf((high - 0.1) / 0.3) - normal_cdf((low - 0.1) / 0.3)
    )
    assert result[5] == ("C", pytest.approx(normal_cdf((low + 3.0) / 0.5)))
    top = 1 - normal_cdf((high - 0.9) / 2.0)  # θ = 0.9 lies in B's interval
    assert result[6] == ("A", pytest.approx(top))  # the largest mass wins, not θ's interval
    assert {g for g, _ in result} <= {"C", "B", "A"}  # D and E have no anchors
    with pytest.raises(ValueError, match="out of grade order"):
        project_grades(theta, se, {0: "A", 3: "C"}, ["C", "B", "A"])
    with pytest.raises(ValueError, match="not in grade_order"):
        project_grades(theta, se, {0: "F"}, ["C", "B", "A"])


def test_split_half_is_nan_not_an_error_when_halves_disagree_completely() -> None:
    # two items, two comparisons that contradict each other: every split correlates at -1
    value = split_half_reliability(2, [0, 1], [1, 0], [True, True], prior=1.0, n_splits=5, rng=0)
    assert math.isnan(value)


# --- order effect, warm starts and the fitted population prior --------------------------------


def judged(n: int, sd: float, per_item: int, seed: int, *, order: float = 0.0,
           lapse: float = 0.0) -> tuple[np.ndarray, Data]:  # fmt: skip
    """Random balanced pairs judged by P(A) = ε/2 + (1 − ε)·σ(θ_A − θ_B + δ)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, sd, n)
    pairs = np.concatenate([rng.permutation(n) for _ in range(per_item)]).reshape(-1, 2)
    eta = truth[pairs[:, 0]] - truth[pairs[:, 1]] + order
    p_first = lapse / 2 + (1 - lapse) / (1.0 + np.exp(-eta))
    return truth, (pairs[:, 0], pairs[:, 1], rng.random(len(pairs)) < p_first)


def test_order_effect_is_recovered_within_its_se() -> None:
    _, data = judged(60, 1.5, 20, seed=4, order=1.0)
    fit = fit_bradley_terry(60, *data, prior=0.3, order_effect=True, order_prior=0.01)
    assert fit.order_effect is not None and fit.order_effect_se is not None
    assert 0.05 < fit.order_effect_se < 0.2
    assert abs(fit.order_effect - 1.0) < 2 * fit.order_effect_se


def test_scores_are_averaged_over_the_spread() -> None:
    truth, data = judged(40, 1.5, 6, seed=12)
    averaged = fit_population(40, *data)
    best = averaged.fit
    assert best.log_evidence is not None and averaged.tau == pytest.approx(population_sd(best))
    # an uncertain τ widens every interval a little, and moves no score far
    assert np.all(averaged.se >= best.se - 1e-12) and np.mean(averaged.se > best.se) > 0.9
    np.testing.assert_allclose(averaged.theta, best.theta, atol=0.25)
    assert 0.0 < averaged.reliability < 1.0
    assert abs(np.corrcoef(averaged.theta, truth)[0, 1] ** 2 - averaged.reliability) < 0.2


def test_starting_from_a_previous_fit_gives_the_same_estimate() -> None:
    _, data = judged(30, 1.5, 10, seed=10, order=0.4, lapse=0.1)
    cold = fit_bradley_terry(30, *data, prior=0.5, order_effect=True)
    rough = fit_bradley_terry(30, *data, prior=2.0, order_effect=True)
    warm = fit_bradley_terry(30, *data, prior=0.5, order_effect=True, initial=rough)
    np.testing.assert_allclose(warm.theta, cold.theta, atol=1e-8)
    assert warm.order_effect == pytest.approx(cold.order_effect, abs=1e-8)


def test_population_spread_is_estimated_from_the_evidence() -> None:
    estimates = []
    for seed in range(3):
        truth, data = judged(150, 1.5, 12, seed=20 + seed)
        fit = fit_spread(150, *data)
        estimates.append(population_sd(fit) / np.std(truth))
        assert fit.log_evidence is not None and fit.order_effect is not None
        for factor in (0.7, 1.4):  # the evidence is largest at the chosen prior
            other = fit_bradley_terry(150, *data, prior=fit.prior / factor**2, order_effect=True,
                                      order_prior=0.1)  # fmt: skip
            assert other.log_evidence is not None and other.log_evidence < fit.log_evidence
    assert 0.85 < float(np.mean(estimates)) < 1.15
