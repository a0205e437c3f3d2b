"""Round planning rules, and a simulated judge comparing adaptive with random pairing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr

from cjllm.cj.options import BatchOptions
from cjllm.cj.pairing import (
    ADAPTIVE_BALANCE,
    ENOUGH_PROBES,
    FLOOR_SHARE,
    PROBE_PART,
    ROUND_MAX,
    plan_round,
    random_round,
    rank_weights,
)
from cjllm.cj.planner import Planner
from cjllm.cj.population import fit_spread, population_sd
from cjllm.cj.ranking import fit_outcomes
from cjllm.cj.records import EssayRecord, PairOutcome
from cjllm.cj.reliability import population_reliability
from cjllm.cj.rounds import LARGE_BATCH, plan_next_round
from cjllm.cj.tables import ComparisonStatus
from cjllm.settings import CJSettings

Pair = tuple[int, int]


def run_rounds(
    n: int, n_pairs: int, rounds: int, seed: int, adaptive: bool = True, **kwargs: int
) -> list[list[Pair]]:
    """Plan ``rounds`` rounds in a row (history accumulates), with fixed random scores."""
    rng = np.random.default_rng(seed)
    theta, se = rng.normal(0.0, 1.5, n), rng.uniform(0.2, 1.0, n)
    first: list[int] = []
    second: list[int] = []
    planned = []
    for _ in range(rounds):
        if adaptive:
            pairs = plan_round(n, first, second, theta, se, n_pairs, rng, **kwargs)
        else:
            pairs = random_round(n, first, second, n_pairs, rng, **kwargs)
        planned.append(pairs)
        first += [a for a, _ in pairs]
        second += [b for _, b in pairs]
    return planned


def a_minus_b(n: int, pairs: list[Pair]) -> np.ndarray:
    return np.bincount([a for a, _ in pairs], minlength=n) - np.bincount(
        [b for _, b in pairs], minlength=n
    )


@pytest.mark.parametrize("adaptive", [True, False])
def test_no_repeats_while_unseen_pairs_remain(adaptive: bool) -> None:
    for seed in range(5):
        rounds = run_rounds(8, 4, 8, seed, adaptive)  # 8 items: 28 pairs, 7 rounds of 4
        flat = [frozenset(p) for r in rounds for p in r]
        assert len(flat) == 32
        assert len(set(flat[:28])) == 28  # every pair once before any repeat
        assert max(Counter(flat).values()) == 2  # then only least-seen pairs repeat
        for r in rounds:
            assert all(isinstance(a, int) and isinstance(b, int) and a != b for a, b in r)


@pytest.mark.parametrize(("n", "n_pairs"), [(20, 10), (21, 10), (40, 20), (30, 7)])
@pytest.mark.parametrize("adaptive", [True, False])
def test_once_per_round_and_positions_balanced(n: int, n_pairs: int, adaptive: bool) -> None:
    for seed in range(4):
        history: list[Pair] = []
        for pairs in run_rounds(n, n_pairs, 8, seed, adaptive):
            assert len(pairs) == n_pairs
            items = [i for p in pairs for i in p]
            assert len(items) == len(set(items))  # at most once per round
            history += pairs
            assert np.abs(a_minus_b(n, history)).max() <= 1  # A/B balance within ±1
            assert len({frozenset(p) for p in history}) == len(history)  # no repeats
        counts = np.bincount([i for p in history for i in p], minlength=n)
        assert counts.max() - counts.min() <= 1  # fewest-compared items go first


def test_unbalanced_history_is_rebalanced() -> None:
    first, second = [0, 0, 0, 1], [1, 2, 3, 2]  # item 0 has been Essay A three times
    pairs = plan_round(6, first, second, None, None, 3, 1)
    position = {a: "A" for a, _ in pairs} | {b: "B" for _, b in pairs}
    assert position[0] == "B"


def test_max_per_item_is_respected() -> None:
    first, second = [0, 0, 1], [1, 2, 2]  # items 0, 1, 2 have two comparisons each
    pairs = plan_round(6, first, second, None, None, 20, 3, max_per_item=3)
    counts = np.bincount(first + second + [i for p in pairs for i in p], minlength=6)
    assert counts.max() <= 3
    assert len(pairs) < 20 and (counts < 3).sum() <= 1  # stops only when budgets run out
    with pytest.raises(ValueError, match="max_per_item"):
        plan_round(6, first, second, None, None, 2, 3, max_per_item=0)


def test_fewest_comparisons_first() -> None:
    first, second = [0, 1, 2, 3, 0, 2], [1, 2, 3, 0, 2, 1]  # items 4..9 never compared
    pairs = plan_round(10, first, second, None, None, 3, 5)
    assert {i for p in pairs for i in p} <= set(range(4, 10))


def test_adaptive_pairs_are_closer_than_random() -> None:
    n = 60
    theta = np.linspace(-6.0, 6.0, n)
    se = np.full(n, 0.5)
    adaptive = plan_round(n, [], [], theta, se, 30, 9, random_fraction=0.0)
    random = random_round(n, [], [], 30, 9)
    gap_adaptive = np.mean([abs(theta[a] - theta[b]) for a, b in adaptive])
    gap_random = np.mean([abs(theta[a] - theta[b]) for a, b in random])
    assert gap_adaptive < gap_random / 3
    assert sorted(i for p in adaptive for i in p) == list(range(n))


def test_bad_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="theta"):
        plan_round(4, [], [], [0.0, 1.0], None, 1, 0)
    with pytest.raises(ValueError, match="se"):
        plan_round(4, [], [], None, [1.0, np.nan, 1.0, 1.0], 1, 0)


def posterior_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores spread N(0, 1.5²) and a posterior covariance, equal SEs and a shared shift."""
    theta = np.sort(np.random.default_rng(seed).normal(0.0, 1.5, n))
    return theta, np.eye(n) * 0.3 + 0.02


def plan_with_covariance(
    n: int, n_pairs: int, rounds: int, seed: int, **kwargs: int
) -> tuple[list[list[Pair]], np.ndarray]:
    theta, covariance = posterior_like(n, seed)
    first: list[int] = []
    second: list[int] = []
    planned = []
    for number in range(rounds):
        pairs = plan_round(
            n, first, second, theta, np.sqrt(np.diag(covariance)), n_pairs, [seed, number],
            covariance=covariance, **kwargs,
        )  # fmt: skip
        planned.append(pairs)
        first += [a for a, _ in pairs]
        second += [b for _, b in pairs]
    return planned, theta


@pytest.mark.parametrize(("n", "n_pairs"), [(40, 25), (100, 50), (21, 10)])
def test_unequal_allocation_keeps_the_floor_and_spends_the_budget(n: int, n_pairs: int) -> None:
    for seed in range(3):
        history: list[Pair] = []
        for pairs in plan_with_covariance(n, n_pairs, 8, seed)[0]:
            assert len(pairs) == n_pairs  # the budget is spent exactly
            assert np.bincount([i for p in pairs for i in p]).max() <= ROUND_MAX
            history += pairs
            assert len({frozenset(p) for p in history}) == len(history)  # no repeats
            # A/B balance: with the covariance within ±ADAPTIVE_BALANCE (rule 4)
            assert np.abs(a_minus_b(n, history)).max() <= ADAPTIVE_BALANCE
            counts = np.bincount([i for p in history for i in p], minlength=n)
            assert counts.min() >= FLOOR_SHARE * counts.mean() - 1  # nobody starves
        assert counts.max() - counts.min() > 2  # the allocation is unequal


def test_crowded_essays_get_more_comparisons_than_the_ends() -> None:
    n = 100
    rounds, theta = plan_with_covariance(n, 50, 10, 4, random_fraction=0)
    counts = np.bincount([i for r in rounds for p in r for i in p], minlength=n)
    middle = np.abs(theta) < 0.5
    ends = np.abs(theta) > 2.5
    assert counts[middle].mean() > counts[ends].mean() + 3


def test_floor_holds_against_the_cap() -> None:
    rounds, _ = plan_with_covariance(30, 15, 12, 2, max_per_item=9)
    counts = np.bincount([i for r in rounds for p in r for i in p], minlength=30)
    assert counts.max() <= 9
    assert sum(len(r) for r in rounds) < 12 * 15  # stops only when budgets run out
    assert (counts < 9).sum() <= 1


def outer_sides(theta: np.ndarray) -> np.ndarray:
    """−1 for the bottom :data:`PROBE_PART` of the items by score, +1 for the top, else 0."""
    part = int(np.ceil(PROBE_PART * theta.size))
    order = np.argsort(theta)
    side = np.zeros(theta.size, dtype=int)
    side[order[:part]], side[order[-part:]] = -1, 1
    return side


@pytest.mark.parametrize(("n", "n_pairs"), [(40, 25), (100, 50)])
def test_each_round_spends_its_probe_share_on_pairs_far_apart(n: int, n_pairs: int) -> None:
    # no random share: only the probe rule pairs the top quarter with the bottom one
    for seed in range(3):
        rounds, theta = plan_with_covariance(
            n, n_pairs, 6, seed, random_fraction=0, probe_fraction=0.2
        )
        side = outer_sides(theta)
        probes = round(0.2 * n_pairs)
        for pairs in rounds:
            across = [(a, b) for a, b in pairs if side[a] * side[b] == -1]
            assert len(across) >= probes >= 1
            assert pairs[:probes] == across[:probes]  # planned first
            gaps = [abs(theta[a] - theta[b]) for a, b in pairs]
            assert min(gaps[:probes]) > np.percentile(theta, 75) - np.percentile(theta, 25)
            assert np.mean(gaps[:probes]) > 3 * np.mean(gaps[probes:])


def test_without_probes_no_round_pairs_the_top_with_the_bottom() -> None:
    rounds, theta = plan_with_covariance(40, 25, 6, 0, random_fraction=0)  # probes off
    side = outer_sides(theta)
    assert not [p for r in rounds for p in r if side[p[0]] * side[p[1]] == -1]


@pytest.mark.parametrize(("n", "n_pairs", "probe"), [(100, 50, 0.1), (40, 25, 0.2)])
def test_enough_probes_count_towards_the_random_share(n: int, n_pairs: int, probe: float) -> None:
    def plans(**kwargs: float) -> list[list[Pair]]:
        return [plan_with_covariance(n, n_pairs, 6, seed, **kwargs)[0] for seed in range(3)]

    assert round(probe * n_pairs) >= ENOUGH_PROBES
    # a random share as large as the probes': no random partners besides them
    no_randoms = plans(random_fraction=0.0, probe_fraction=probe)
    assert plans(random_fraction=probe, probe_fraction=probe) == no_randoms
    # a larger share: random partners for what the probes leave of it
    assert plans(random_fraction=probe + 0.2, probe_fraction=probe) != no_randoms
    # without probes the share is all random partners, as before
    assert plans(random_fraction=probe, probe_fraction=0.0) != plans(random_fraction=0.0)


def test_a_round_with_few_probes_keeps_its_random_partners() -> None:
    # 40 essays, rounds of 25 pairs, the defaults: 2 probes, and 10% of the rest at random
    def plans(rf: float) -> list[list[Pair]]:
        return [plan_with_covariance(40, 25, 6, s, random_fraction=rf, probe_fraction=0.1)[0]
                for s in range(3)]  # fmt: skip

    assert round(0.1 * 25) < ENOUGH_PROBES
    assert plans(0.1) != plans(0.0)


def test_probes_keep_caps_balance_and_no_repeats() -> None:
    n, cap = 40, 8
    history: list[Pair] = []
    rounds, theta = plan_with_covariance(n, 20, 12, 5, probe_fraction=0.5, max_per_item=cap)
    side = outer_sides(theta)
    for number, pairs in enumerate(rounds):
        probes = [i for p in pairs[:10] for i in p]  # 0.5 of 20: planned first
        if number < 6:  # (when the caps leave few items, the last round may repeat them)
            assert len(pairs) == 20 and np.bincount(probes).max() <= ROUND_MAX
            assert np.bincount([i for p in pairs for i in p]).max() <= ROUND_MAX
        for pair in pairs:  # rule 1: a repeat only when the items with budget have all met
            met = {frozenset(p) for p in history}
            if frozenset(pair) in met:
                counts = np.bincount([i for p in history for i in p], minlength=n)
                left = np.flatnonzero(counts < cap).tolist()
                assert all(frozenset((a, b)) in met for a in left for b in left if a < b)
            history.append(pair)
        assert np.abs(a_minus_b(n, history)).max() <= ADAPTIVE_BALANCE  # rule 4
    counts = np.bincount([i for p in history for i in p], minlength=n)
    assert counts.max() <= cap
    assert (counts < cap).sum() <= 1  # the budget is spent up to the caps
    # the outer quarters' budgets went largely to probes, each at most cap
    assert sum(side[a] * side[b] == -1 for a, b in history) >= 40


def test_probes_need_the_covariance() -> None:
    theta, covariance = posterior_like(40, 1)
    side = outer_sides(theta)
    pairs = plan_round(40, [], [], theta, np.sqrt(np.diag(covariance)), 20, 1,
                       random_fraction=0, probe_fraction=0.5)  # fmt: skip
    assert not [p for p in pairs if side[p[0]] * side[p[1]] == -1]
    with pytest.raises(ValueError, match="probe_fraction"):
        plan_round(40, [], [], None, None, 2, 1, probe_fraction=1.5)


def test_rank_weights_favour_crowded_scores() -> None:
    theta = np.array([-6.0, -0.2, 0.0, 0.1, 0.3, 5.0])
    weights = rank_weights(theta, np.eye(6) * 0.25)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[[1, 2, 3, 4]].min() > 10 * weights[[0, 5]].max()


def simulate_judging(adaptive: bool, seed: int) -> tuple[float, float]:
    """100 essays, true abilities N(0, 2²) logits, a logistic judge, 14 rounds of 50 pairs
    (14 comparisons per essay, 700 in all), refit under the fitted population prior after
    every round, as the CJ service does. Returns (Spearman ρ, reliability − actual r²)."""
    n, rounds = 100, 14
    truth = np.random.default_rng(seed).normal(0.0, 2.0, n)
    judge, planner = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    first: list[int] = []
    second: list[int] = []
    won: list[bool] = []
    fit = None
    for _ in range(rounds):
        if adaptive:
            pairs = plan_round(
                n, first, second, None if fit is None else fit.theta,
                None if fit is None else fit.se, n // 2, planner,
                covariance=None if fit is None else fit.covariance,
            )  # fmt: skip
        else:
            pairs = random_round(n, first, second, n // 2, planner)
        for a, b in pairs:
            first.append(a)
            second.append(b)
            won.append(bool(judge.random() < 1.0 / (1.0 + np.exp(truth[b] - truth[a]))))
        fit = fit_spread(n, first, second, won, initial=fit)
    assert len(first) == 700 and fit is not None
    rho = float(spearmanr(fit.theta, truth)[0])
    r2 = float(np.corrcoef(fit.theta, truth)[0, 1] ** 2)
    return rho, population_reliability(fit.se, population_sd(fit)) - r2


@pytest.mark.parametrize("adaptive", [True, False])
def test_simulated_judge_is_ranked_well_with_honest_reliability(adaptive: bool) -> None:
    # one batch each (the measurement over many batches is bench/judgement.py)
    rho, gap = simulate_judging(adaptive, seed=11)
    assert rho >= 0.85
    assert abs(gap) < 0.1


def test_the_probe_setting_reaches_the_rounds_the_service_plans() -> None:
    """CJLLM_PAIRING_PROBE_FRACTION → BatchOptions → plan_next_round → rule 6's probes."""
    n = 40
    essays = [EssayRecord(f"e{i:02d}", i, f"essay {i}", None) for i in range(n)]
    rng = np.random.default_rng(3)
    order = rng.permutation(n)
    outcomes = [  # one round of random pairs, the higher position always winning
        PairOutcome(
            essays[a].essay_id,
            essays[b].essay_id,
            ComparisonStatus.SUCCEEDED,
            essays[max(a, b)].essay_id,
            1,
            1,
        )
        for a, b in zip(order[::2].tolist(), order[1::2].tolist(), strict=True)
    ]

    def top_bottom_pairs(probe_fraction: float) -> tuple[int, int]:
        settings = CJSettings(pairing_probe_fraction=probe_fraction)
        options = BatchOptions.from_settings(settings)
        fit = fit_outcomes(essays, outcomes, options)
        planned = plan_next_round("probe-batch", 2, options, essays, outcomes, fit)
        ranks = np.argsort(np.argsort(fit.theta, kind="stable"), kind="stable")
        side = {
            e.essay_id: int(ranks[i] < n // 4) - int(ranks[i] >= n - n // 4)
            for i, e in enumerate(essays)
        }
        across = sum(side[p.essay_a_id] * side[p.essay_b_id] == -1 for p in planned)
        return across, len(planned)

    across, size = top_bottom_pairs(0.5)
    assert across >= round(0.5 * size) - 1
    assert top_bottom_pairs(0.0)[0] < across


@pytest.mark.parametrize(("n", "per_round"), [(LARGE_BATCH, 1), (LARGE_BATCH + 1, 2)])
def test_a_large_batch_gives_every_essay_two_comparisons_a_round(n: int, per_round: int) -> None:
    """Above LARGE_BATCH essays a round is two passes (every essay twice), the first round
    (nothing fitted: random pairs) and an adaptive one alike; up to it, ⌊n/2⌋ pairs."""
    essays = [EssayRecord(f"e{i:04d}", i, f"essay {i}", None) for i in range(n)]
    options = BatchOptions.from_settings(CJSettings(comparisons_per_essay=10))
    outcomes: list[PairOutcome] = []
    for number in (1, 2):
        fit = fit_outcomes(essays, outcomes, options)
        planned = plan_next_round("large-batch", number, options, essays, outcomes, fit)
        assert len(planned) == n * per_round // 2
        seen = Counter(e for p in planned for e in (p.essay_a_id, p.essay_b_id))
        if per_round == 2 or number == 1:  # (with the covariance, 0 to ROUND_MAX each)
            assert set(seen.values()) == {per_round} and len(seen) == n
        outcomes += [  # the higher position always wins
            PairOutcome(p.essay_a_id, p.essay_b_id, ComparisonStatus.SUCCEEDED,
                        "Essay A" if p.essay_a_id > p.essay_b_id else "Essay B", 1, number)
            for p in planned
        ]  # fmt: skip


def test_adaptive_rounds_keep_positions_within_two() -> None:
    # rule 4 with the covariance: A − B within ±2, not ±1 — the best partner by gain is often
    # one whose balance has the same sign (docs/judgement.md, "Positions within two")
    reached = set()
    for n, n_pairs in ((40, 25), (100, 50)):
        for seed in range(3):
            history: list[Pair] = []
            for pairs in plan_with_covariance(n, n_pairs, 8, seed)[0]:
                history += pairs
                balance = a_minus_b(n, history)
                assert np.abs(balance).max() <= ADAPTIVE_BALANCE
                reached.add(int(np.abs(balance).max()))
    assert ADAPTIVE_BALANCE == 2 and 2 in reached


def test_compatible_partners_within_a_bound() -> None:
    n = 6
    first, second = [0, 0, 1, 5, 5], [3, 4, 4, 3, 4]  # A − B: 2, 1, 0, −2, −3, 2
    planner = Planner(
        n,
        np.array(first, dtype=np.intp),
        np.array(second, dtype=np.intp),
        np.zeros(n),
        np.ones(n),
        np.random.default_rng(0),
        None,
    )
    assert planner.balance.tolist() == [2, 1, 0, -2, -3, 2]
    wide = planner.compatible(0, 2)  # ±2: item 0 (at +2) takes partners below +2
    assert wide is not None and np.flatnonzero(wide).tolist() == [1, 2, 3, 4]
    assert planner.compatible(1, 2) is None and planner.compatible(2, 2) is None
    low = planner.compatible(4, 2)  # item 4 (at −3) takes partners above −2
    assert low is not None and np.flatnonzero(low).tolist() == [0, 1, 2, 5]
    narrow = planner.compatible(1)  # ±1: partners whose A − B is ≤ 0
    assert narrow is not None and np.flatnonzero(narrow).tolist() == [2, 3, 4]
