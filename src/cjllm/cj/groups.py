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
   A − B (history included) closer to its partners' (:func:`_balance`).
6. A group's pairs are connected (a partner swap mends a group that fell apart), so **the
   groups of a round are the connected components of its pairs**: :func:`group_labels`
   recovers them from the pairs alone, and a resumed round needs no stored group.

Across rounds the bridges, the changing membership (rule 1) and the moving estimates shift
the group boundaries, so a batch's comparison graph becomes connected.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from cjllm.cj.scoring import RngLike, _indexes

Pair = tuple[int, int]
IntArray = npt.NDArray[np.intp]
Essay = TypeVar("Essay", int, str)


class _Round:
    """History counts plus the pairs planned so far in this round."""

    def __init__(self, n: int, first: IntArray, second: IntArray, cap: int | None) -> None:
        # times each pair has been compared, by (lower, higher) index: only pairs that were
        # (an n × n matrix would not fit at 100,000 essays)
        low, high = np.minimum(first, second).tolist(), np.maximum(first, second).tolist()
        self.seen: Counter[Pair] = Counter(zip(low, high, strict=True))
        self.count = np.bincount(first, minlength=n) + np.bincount(second, minlength=n)
        self.balance = np.bincount(first, minlength=n) - np.bincount(second, minlength=n)
        self.degree = np.zeros(n, dtype=np.int64)  # comparisons planned in this round
        unlimited = np.iinfo(np.int64).max // 2
        self.room = np.full(n, unlimited) if cap is None else np.maximum(cap - self.count, 0)

    def apply(self, a: int, b: int, sign: int = 1) -> None:
        """Add (sign = 1) or remove (sign = −1) the comparison Essay A = a, Essay B = b."""
        self.seen[(a, b) if a < b else (b, a)] += sign
        self.degree[[a, b]] += sign
        self.room[[a, b]] -= sign
        self.balance[a] += sign
        self.balance[b] -= sign

    def times_seen(self, i: IntArray, j: IntArray) -> IntArray:
        """How often each pair (i[k], j[k]) has been compared, this round's plan included."""
        pairs = zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True)
        return np.fromiter((self.seen[p] for p in pairs), dtype=np.intp, count=i.size)

    def orient(self, i: int, j: int, rng: np.random.Generator) -> Pair:
        """(Essay A, Essay B): whoever has been Essay A more often goes second."""
        if self.balance[i] == self.balance[j]:
            return (i, j) if rng.random() < 0.5 else (j, i)
        return (j, i) if self.balance[i] > self.balance[j] else (i, j)


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
    first, second = _indexes(n_items, history_first, history_second)
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
    state = _Round(n_items, first, second, max_per_item)
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
        pairs = _pairs_within(state, group, target, values[0], values[1], random_fraction, gen)
        planned.append(_balance(state, _connect(state, pairs, gen)))
    return [pairs for pairs in planned if pairs]


def _members(
    state: _Round,
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
    state: _Round,
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
    main = set(sorted(_components(history).values(), key=len)[-1])
    links = history + [(g[0], e) for g in groups for e in g[1:]]
    # one frozenset per component, shared by its essays (one each would be n² at scale)
    component = {
        e: members for c in _components(links).values() for members in [frozenset(c)] for e in c
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


def _components(pairs: Sequence[Pair]) -> dict[int, list[int]]:
    """The essays of ``pairs`` by connected component (keyed by its smallest essay)."""
    out: dict[int, list[int]] = {}
    for (a, b), label in zip(pairs, group_labels(pairs), strict=True):
        out.setdefault(label, []).extend((a, b))
    return {label: sorted(set(essays)) for label, essays in out.items()}


def _capacity(state: _Round, group: list[int]) -> int:
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


def _pairs_within(
    state: _Round,
    group: list[int],
    target: int,
    theta: npt.NDArray[np.float64],
    se: npt.NDArray[np.float64],
    random_fraction: float,
    rng: np.random.Generator,
) -> list[Pair]:
    """Rule 4: ``target`` comparisons among ``group``, best candidate first."""
    if target <= 0:
        return []
    members = np.asarray(group, dtype=np.intp)
    left, right = np.triu_indices(members.size, 1)
    i, j = members[left], members[right]
    share = math.ceil(2 * target / members.size)
    p = 1.0 / (1.0 + np.exp(theta[j] - theta[i]))
    var = se[i] ** 2 + se[j] ** 2
    gain = var**2 * p * (1.0 - p) / (1.0 + var * p * (1.0 - p))
    random_slots = set(rng.permutation(target)[: round(random_fraction * target)].tolist())
    plan: list[Pair] = []
    fresh = np.ones(i.size, dtype=bool)  # not yet planned in this round
    # read once: planning a pair changes only its own count, and a planned pair is not open
    seen = state.times_seen(i, j)
    for slot in range(target):
        open_ = np.flatnonzero(fresh & (state.room[i] > 0) & (state.room[j] > 0))
        if open_.size == 0:
            break
        di, dj = state.degree[i], state.degree[j]
        last = rng.random(i.size) if slot in random_slots else -gain
        keys = (
            last,
            di + dj,
            np.maximum(di, dj),
            seen,
            np.maximum(di, dj) >= share,
        )
        best = open_[np.lexsort(tuple(k[open_] for k in keys))[0]]
        fresh[best] = False
        a, b = state.orient(int(i[best]), int(j[best]), rng)
        state.apply(a, b)
        plan.append((a, b))
    return _even_out(state, plan, rng)


def _even_out(state: _Round, plan: list[Pair], rng: np.random.Generator) -> list[Pair]:
    """Hand comparisons from the busiest essay of the group to the idlest, (x, z) → (y, z),
    until their in-round counts differ by at most one (greedy planning can end unevenly)."""
    while True:
        degree = Counter(e for pair in plan for e in pair)
        x, y = max(degree, key=degree.__getitem__), min(degree, key=degree.__getitem__)
        if degree[x] - degree[y] <= 1 or state.room[y] <= 0:
            return plan
        taken = {frozenset(p) for p in plan}
        moves = [
            k
            for k, p in enumerate(plan)
            if x in p and y not in p and frozenset((p[0] if p[1] == x else p[1], y)) not in taken
        ]
        if not moves:
            return plan
        k = moves[0]
        z = plan[k][0] if plan[k][1] == x else plan[k][1]
        state.apply(*plan[k], -1)
        plan[k] = state.orient(y, z, rng)
        state.apply(*plan[k])


def _connect(state: _Round, pairs: list[Pair], rng: np.random.Generator) -> list[Pair]:
    """Rule 6: swap partners between components until the group's pairs are connected.

    (a, b) in one component and (c, d) in another become (a, c) and (b, d): every essay
    keeps its number of comparisons. A swap is kept only when it lowers the number of
    components and repeats no pair of the round; when none does, the group stays split
    (it then goes out as more than one bundle, which is only dearer).
    """
    pairs = list(pairs)
    while True:
        parts = [set(c) for c in _components(pairs).values()]
        if len(parts) <= 1:
            return pairs
        mended = _mend(pairs, parts, len(parts))
        if mended is None:
            return pairs
        removed, added = mended
        for a, b in removed:
            state.apply(a, b, -1)
            pairs.remove((a, b))
        for x, y in added:
            a, b = state.orient(x, y, rng)
            state.apply(a, b)
            pairs.append((a, b))


def _mend(
    pairs: list[Pair], parts: list[set[int]], count: int
) -> tuple[list[Pair], list[Pair]] | None:
    first = [p for p in pairs if p[0] in parts[0]]
    other = [p for p in pairs if p[0] not in parts[0]]
    planned = {frozenset(p) for p in pairs}
    for ab in first:
        for cd in other:
            for c, d in (cd, cd[::-1]):
                added = [(ab[0], c), (ab[1], d)]
                if any(frozenset(p) in planned for p in added):
                    continue
                trial = [p for p in pairs if p not in (ab, cd)] + added
                if len(_components(trial)) < count:
                    return [ab, cd], added
    return None


def group_labels(pairs: Sequence[tuple[Essay, Essay]]) -> list[Essay]:
    """The group of each pair: the smallest essay of its connected component (rule 6).

    Works on indexes and on essay ids alike; the label of a group does not depend on the
    order of its pairs.
    """
    parent: dict[Essay, Essay] = {}

    def root(x: Essay) -> Essay:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if rb < ra:
            ra, rb = rb, ra
        parent[rb] = ra
    return [root(a) for a, _ in pairs]


def _balance(state: _Round, pairs: list[Pair]) -> list[Pair]:
    """Rule 5: turn round whole chains of a group's comparisons to even out A/B positions.

    Turning the comparisons along a chain u → x → … → v (each link Essay A → Essay B) moves
    two from u's A − B to v's and leaves the essays between unchanged; it is done while some
    u can reach a v whose A − B is more than two lower, which lowers the sum of squares of
    A − B every time, so it ends.
    """
    pairs = list(pairs)
    while True:
        onward: dict[int, list[int]] = {}
        for k, (a, _) in enumerate(pairs):
            onward.setdefault(a, []).append(k)
        path = _chain_to_even_out(state, pairs, onward)
        if path is None:
            return pairs
        for k in path:
            a, b = pairs[k]
            state.apply(a, b, -1)
            state.apply(b, a)
            pairs[k] = (b, a)


def _chain_to_even_out(
    state: _Round, pairs: list[Pair], onward: dict[int, list[int]]
) -> list[int] | None:
    """The comparisons (indexes into ``pairs``) of a chain worth turning round, or None."""
    for u in sorted(onward, key=lambda e: -int(state.balance[e])):
        via: dict[int, int | None] = {u: None}
        frontier = [u]
        while frontier:
            nxt = []
            for x in frontier:
                for k in onward.get(x, ()):
                    y = pairs[k][1]
                    if y not in via:
                        via[y] = k
                        nxt.append(y)
            frontier = nxt
        v = min(via, key=lambda e: int(state.balance[e]))
        if state.balance[u] - state.balance[v] > 2:
            path: list[int] = []
            while (link := via[v]) is not None:
                path.append(link)
                v = pairs[link][0]
            return path
    return None
