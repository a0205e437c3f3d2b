"""Rounds planned as groups (cj/groups.py): disjoint, connected groups of near essays."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr

from cjllm.cj.group_pairs import group_labels
from cjllm.cj.groups import plan_groups
from cjllm.cj.pairing import random_round
from cjllm.cj.scoring import connected_components, fit_bradley_terry

Pair = tuple[int, int]


def run_rounds(
    n: int, n_pairs: int, rounds: int, seed: int, **kwargs: object
) -> list[list[list[Pair]]]:
    """Plan ``rounds`` grouped rounds in a row (history accumulates), fixed random scores."""
    rng = np.random.default_rng(seed)
    theta, se = rng.normal(0.0, 1.5, n), rng.uniform(0.2, 1.0, n)
    first: list[int] = []
    second: list[int] = []
    planned = []
    for _ in range(rounds):
        groups = plan_groups(n, first, second, theta, se, n_pairs, rng, **kwargs)  # type: ignore[arg-type]
        planned.append(groups)
        first += [a for g in groups for a, _ in g]
        second += [b for g in groups for _, b in g]
    return planned


@pytest.mark.parametrize(
    ("n", "n_pairs", "k"),
    [(40, 50, 6), (40, 50, 10), (40, 50, 16), (100, 50, 10), (12, 50, 10), (30, 7, 10)],
)
def test_groups_are_disjoint_connected_and_fill_the_round(n: int, n_pairs: int, k: int) -> None:
    for seed in range(3):
        for groups in run_rounds(n, n_pairs, 4, seed, group_size=k):
            members = [{e for pair in g for e in pair} for g in groups]
            assert all(2 <= len(m) <= k + 1 for m in members)  # + 1: a bridge
            assert sum(len(m) for m in members) == len(set().union(*members))  # disjoint
            pairs = [p for g in groups for p in g]
            assert all(a != b for a, b in pairs)
            # each group is one connected component of the round's pairs: one bundle each
            labels = group_labels(pairs)
            assert [set(labels[i] for i, p in enumerate(pairs) if p in g) for g in groups] == [
                {min(m)} for m in members
            ]
            room = sum(len(m) * (len(m) - 1) // 2 for m in members)
            assert len(pairs) == min(n_pairs, room)
            assert len(set(map(frozenset, pairs))) == len(pairs)  # no pair twice in a round


def test_essays_share_the_round_fairly_and_keep_their_positions_balanced() -> None:
    n = 40
    history: list[Pair] = []
    for groups in run_rounds(n, 50, 8, 5, group_size=10, pairs_per_item=4):
        round_pairs = [p for g in groups for p in g]
        degree = Counter(e for p in round_pairs for e in p)
        for g in groups:
            in_group = [degree[e] for e in {e for p in g for e in p}]
            assert max(in_group) - min(in_group) <= 1
        history += round_pairs
        a_minus_b = np.bincount([a for a, _ in history], minlength=n) - np.bincount(
            [b for _, b in history], minlength=n
        )
        assert np.abs(a_minus_b).max() <= 2
        assert np.mean(np.abs(a_minus_b) <= 1) >= 0.9
    counts = Counter(e for p in history for e in p)  # 400 comparisons: 20 per essay
    assert max(counts.values()) - min(counts.values()) <= 4


def test_budgets_and_sitting_out_are_respected() -> None:
    rng = np.random.default_rng(3)
    first, second = [0, 0, 1], [1, 2, 2]  # essays 0, 1, 2 have two comparisons each
    groups = plan_groups(20, first, second, None, None, 30, rng, max_per_item=3, exclude={5, 6})
    counts = Counter(e for g in groups for p in g for e in p) + Counter(first + second)
    assert max(counts[e] for e in (0, 1, 2)) <= 3
    assert counts[5] == counts[6] == 0
    assert plan_groups(5, [], [], None, None, 10, rng, exclude={0, 1, 2, 3}) == []
    assert plan_groups(5, [], [], None, None, 0, rng) == []


def test_groups_gather_essays_near_each_other_on_the_scale() -> None:
    n = 60
    theta = np.random.default_rng(1).normal(0.0, 2.0, n)
    se = np.full(n, 0.3)
    groups = plan_groups(n, [], [], theta, se, 120, 2, group_size=10, random_fraction=0.0)
    grouped = [abs(theta[a] - theta[b]) for g in groups for a, b in g]
    random = [abs(theta[a] - theta[b]) for a, b in random_round(n, [], [], 120, 2)]
    assert np.mean(grouped) < np.mean(random) / 3


def test_group_labels_are_the_smallest_essay_of_each_component_in_any_order() -> None:
    pairs = [("e", "b"), ("x", "y"), ("b", "c"), ("y", "w")]
    assert group_labels(pairs) == ["b", "w", "b", "w"]
    for order in itertools.permutations(range(4)):
        shuffled = [pairs[i] for i in order]
        assert group_labels(shuffled) == [group_labels(pairs)[i] for i in order]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="group_size"):
        plan_groups(4, [], [], None, None, 2, 0, group_size=1)
    with pytest.raises(ValueError, match="theta"):
        plan_groups(4, [], [], [0.0], None, 2, 0)


def test_grouped_rounds_rank_a_simulated_batch_and_keep_it_connected() -> None:
    """40 essays, true abilities N(0, 2²), a logistic judge, 4 grouped rounds of 50."""
    n, seed = 40, 4
    truth = np.random.default_rng(seed).normal(0.0, 2.0, n)
    judge, planner = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    first: list[int] = []
    second: list[int] = []
    won: list[bool] = []
    theta = se = None
    for _ in range(4):
        for group in plan_groups(n, first, second, theta, se, 50, planner):
            for a, b in group:
                first.append(a)
                second.append(b)
                won.append(bool(judge.random() < 1.0 / (1.0 + np.exp(truth[b] - truth[a]))))
        fit = fit_bradley_terry(n, first, second, won, prior=0.2)
        theta, se = fit.theta, fit.se
    assert len(first) == 200
    assert len(connected_components(n, first, second)) == 1
    assert spearmanr(fit.theta, truth)[0] > 0.85


def test_fresh_essays_are_bridged_to_those_compared_before() -> None:
    """Six essays met each other; six never met anyone. The round joins them on one scale."""
    done = list(itertools.combinations(range(6), 2))
    first, second = [a for a, _ in done], [b for _, b in done]
    for seed in range(5):
        groups = plan_groups(12, first, second, None, None, 12, seed, group_size=6)
        pairs = [p for g in groups for p in g]
        assert len(pairs) == 12
        assert {e for p in pairs for e in p} >= set(range(6, 12))
        all_first = first + [a for a, _ in pairs]
        all_second = second + [b for _, b in pairs]
        assert len(connected_components(12, all_first, all_second)) == 1


def test_a_round_of_thousands_of_essays_takes_memory_in_proportion_to_them() -> None:
    """No n × n structure: 5,000 essays compared in a ring plan a round in a few MB (an n × n
    count matrix alone is 100 MB here, and 40 GB at 100,000 essays)."""
    n = 5_000
    first = np.arange(n)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        groups = plan_groups(n, first, (first + 1) % n, rng.normal(size=n), np.full(n, 0.5), n, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6
    assert sum(map(len, groups)) == n
