"""Rounds planned as groups: a few essays, several comparisons among them, one bundle each.

With the ``pool`` bundle layout a provider call sends each distinct essay once, so a call
is cheap when its comparisons share essays. A grouped round therefore takes groups of at
most ``group_size`` essays and plans several comparisons *within* each group; each group
goes to the provider as one bundle (its own ``bundle_group``). Indexes only, as in
:mod:`cjllm.cj.pairing`. Rules:

1. Members: the essays with the fewest comparisons (ties at random) that still have budget
   (``max_per_item``) and are not in ``exclude`` (the essays of retried pairs, which travel
   on their own), as many as the round needs at ``pairs_per_item`` comparisons each.
2. Groups: members are ordered by their current θ (ties at random, so the first round's
   groups are random) and cut into groups of near-equal size (in random order), none over
   ``group_size`` (a bridge, rule 3, may add one), so essays near each other on the scale
   meet; no essay is in two groups. (Two variants lowered the simulated Spearman ρ and were
   dropped: ordering by a draw θ + se·z, so that uncertain essays wander, by about 0.01;
   letting a random share of the members swap places, by about 0.004.)
3. Bridges: from the second round on, a group that neither the history nor another group
   joins to the largest component of the comparisons so far gets an essay of it
   (:func:`_bridge`), so a batch whose first rounds met only part of the essays does not
   end as islands on scales of their own.
4. Pairs within a group, one at a time, the best candidate first by: nobody beyond its fair
   share of the group's comparisons; the least-seen pair (no repeat while an unseen pair
   remains in the group; never twice in a round); the lowest in-round counts; then, for all
   but a ``random_fraction`` of the slots, the largest expected reduction of the posterior
   variance of θ_i − θ_j (the information rule of :mod:`cjllm.cj.pairing`), else — the
   round's random share — at random.
   A group that ends unevenly hands comparisons from its busiest essay to its idlest.
5. Positions: of the two essays, the one that has been Essay A more often becomes Essay B;
   then chains of the group's comparisons are turned round while that brings an essay's
   A − B (history included) closer to its partners' (:func:`cjllm.cj.group_pairs.balance`).
6. A group's pairs are connected (a partner swap mends a group that fell apart), so **the
   groups of a round are the connected components of its pairs**: :func:`group_labels`
   (:mod:`cjllm.cj.group_pairs`) recovers them from the pairs alone, and a resumed round
   needs no stored group.

Across rounds the bridges, the changing membership (rule 1) and the moving estimates shift
the group boundaries, so a batch's comparison graph becomes connected.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from cjllm.cj.group_pairs import Pair, RoundState, balance, components, connect, pairs_within
from cjllm.cj.scoring import RngLike, checked_indexes


def plan_groups(
    n_items: int,
    history_first: npt.ArrayLike,
    history_second: npt.ArrayLike,
    theta: npt.ArrayLike | None,
    se: npt.ArrayLike | None,
    n_pairs: int,
    rng: RngLike = None,
    *,
    group_size: int = 10,
    pairs_per_item: int = 4,
    random_fraction: float = 0.25,
    max_per_item: int | None = None,
    exclude: Collection[int] = (),
) -> list[list[Pair]]:
    """Plan one round of up to ``n_pairs`` comparisons as groups, by the module rules.

    ``history_first``/``history_second``: Essay A / Essay B indexes of every comparison already
    planned (answered or pending). ``theta``/``se``: current estimates (``None``: all 0 and
    all 1, nothing known yet). ``rng``: anything ``np.random.default_rng`` accepts. Returns
    the groups' ``(essay_a, essay_b)`` pairs, one list per group; fewer than ``n_pairs`` in
    all only when budgets (``max_per_item``) or the groups' room leave fewer.
    """
    first, second = checked_indexes(n_items, history_first, history_second)
    values = []
    for name, given, default in (("theta", theta, 0.0), ("se", se, 1.0)):
        array = np.full(n_items, default) if given is None else np.asarray(given, dtype=float)
        if array.shape != (n_items,) or not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must hold {n_items} finite values, got shape {array.shape}")
        values.append(array)
    if n_pairs < 0 or not 0.0 <= random_fraction <= 1.0:
        raise ValueError("n_pairs must be >= 0 and random_fraction within [0, 1]")
    if group_size < 2 or pairs_per_item < 1 or (max_per_item is not None and max_per_item < 1):
        raise ValueError("group_size must be >= 2, pairs_per_item and max_per_item >= 1")
    gen = np.random.default_rng(rng)
    state = RoundState(n_items, first, second, max_per_item)
    eligible = state.room > 0
    eligible[list(exclude)] = False
    members = _members(state, eligible, n_pairs, group_size, pairs_per_item, gen)
    groups = _cut(members, values[0], group_size, gen)
    history = list(zip(first.tolist(), second.tolist(), strict=True))
    _bridge(groups, history, state, eligible, values[0])
    capacities = [_capacity(state, g) for g in groups]
    targets = _share(n_pairs, capacities, [len(g) for g in groups])
    planned = []
    for group, target in zip(groups, targets, strict=True):
        pairs = pairs_within(state, group, target, values[0], values[1], random_fraction, gen)
        planned.append(balance(state, connect(state, pairs, gen)))
    return [pairs for pairs in planned if pairs]


def _members(
    state: RoundState,
    eligible: npt.NDArray[np.bool_],
    n_pairs: int,
    group_size: int,
    pairs_per_item: int,
    rng: np.random.Generator,
) -> list[int]:
    """Rule 1: the fewest-compared eligible essays, enough for ``n_pairs`` in groups."""
    items = np.flatnonzero(eligible)
    if n_pairs == 0 or items.size < 2:
        return []
    order = items[np.lexsort((rng.random(items.size), state.count[items]))]
    needed = min(items.size, max(2, math.ceil(2 * n_pairs / pairs_per_item)))
    while needed < items.size and _room(needed, group_size) < n_pairs:
        needed += 1
    return [int(i) for i in order[:needed]]


def _room(members: int, group_size: int) -> int:
    """Pairs that ``members`` essays in groups of at most ``group_size`` can hold at most."""
    sizes = _sizes(members, math.ceil(members / group_size))
    return sum(s * (s - 1) // 2 for s in sizes)


def _sizes(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if g < total % parts else 0) for g in range(parts)]


def _cut(
    members: list[int], theta: npt.NDArray[np.float64], group_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Rule 2: order by ``theta`` (ties at random), cut into groups of near-equal size."""
    if not members:
        return []
    ties = rng.random(len(members))
    ordered = [members[k] for k in np.lexsort((ties, theta[members]))]
    sizes = rng.permutation(_sizes(len(ordered), math.ceil(len(ordered) / group_size)))
    bounds = np.cumsum([0, *sizes])
    return [ordered[bounds[g] : bounds[g + 1]] for g in range(len(sizes))]


def _bridge(
    groups: list[list[int]],
    history: list[Pair],
    state: RoundState,
    eligible: npt.NDArray[np.bool_],
    theta: npt.NDArray[np.float64],
) -> None:
    """Rule 3: join every group to the largest component of the comparisons so far.

    The groups and the history make components; a group whose component is not the main
    one (fresh essays, say, or an island of the first round) gets one essay of the main
    component: one sitting the round out if any has budget (the group may then hold
    ``group_size + 1``), else one moved from a group that keeps another; the nearest to the
    group on the scale, then the least compared. Groups are disjoint, so within a round
    only the history can join them.
    """
    if not history:
        return
    main = set(sorted(components(history).values(), key=len)[-1])
    links = history + [(g[0], e) for g in groups for e in g[1:]]
    # one frozenset per component, shared by its essays (one each would be n² at scale)
    component = {
        e: members for c in components(links).values() for members in [frozenset(c)] for e in c
    }
    joined = set(component[next(iter(main))])
    grouped = {e for g in groups for e in g}
    for group in groups:
        if group[0] in joined:
            continue
        centre = float(np.median(theta[group]))
        spare = [e for e in sorted(main) if eligible[e] and e not in grouped]
        donors = [
            (other, e)
            for other in groups
            if len(other) >= 3 and len(main.intersection(other)) >= 2
            for e in sorted(main.intersection(other))
        ]
        if spare:
            x = min(spare, key=lambda e: (abs(float(theta[e]) - centre), int(state.count[e])))
            grouped.add(x)
        elif donors:
            other, x = min(donors, key=lambda d: abs(float(theta[d[1]]) - centre))
            other.remove(x)
        else:
            continue
        group.append(x)
        joined |= component.get(group[0], frozenset(group))


def _capacity(state: RoundState, group: list[int]) -> int:
    """Comparisons a group can hold: each pair once, each essay within its budget."""
    budget = sum(min(int(state.room[i]), len(group) - 1) for i in group)
    return min(len(group) * (len(group) - 1) // 2, budget // 2)


def _share(total: int, capacities: Sequence[int], weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (highest averages), none over capacity."""
    shares = [0] * len(weights)
    # the groups under capacity by their next average, highest first (the lowest index on a
    # tie): one heap step per comparison, not a scan of every group
    heap = [(-(w / 1), g) for g, w in enumerate(weights) if capacities[g] > 0]
    heapq.heapify(heap)
    for _ in range(min(total, sum(capacities))):
        _, g = heapq.heappop(heap)
        shares[g] += 1
        if shares[g] < capacities[g]:
            heapq.heappush(heap, (-(weights[g] / (shares[g] + 1)), g))
    return shares
