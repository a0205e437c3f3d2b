"""One group of a grouped round (:mod:`cjllm.cj.groups`): its pairs chosen, connected and
turned for position balance — rules 4–6 there. Indexes only.

:class:`RoundState` holds the counts every rule reads (history and this round's plan so far);
:func:`group_labels` recovers a round's groups from its pairs alone (a group's pairs are
connected, so the groups are the connected components).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

Pair = tuple[int, int]
IntArray = npt.NDArray[np.intp]
Essay = TypeVar("Essay", int, str)


class RoundState:
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


def components(pairs: Sequence[Pair]) -> dict[int, list[int]]:
    """The essays of ``pairs`` by connected component (keyed by its smallest essay)."""
    out: dict[int, list[int]] = {}
    for (a, b), label in zip(pairs, group_labels(pairs), strict=True):
        out.setdefault(label, []).extend((a, b))
    return {label: sorted(set(essays)) for label, essays in out.items()}


def pairs_within(
    state: RoundState,
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


def _even_out(state: RoundState, plan: list[Pair], rng: np.random.Generator) -> list[Pair]:
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


def connect(state: RoundState, pairs: list[Pair], rng: np.random.Generator) -> list[Pair]:
    """Rule 6: swap partners between components until the group's pairs are connected.

    (a, b) in one component and (c, d) in another become (a, c) and (b, d): every essay
    keeps its number of comparisons. A swap is kept only when it lowers the number of
    components and repeats no pair of the round; when none does, the group stays split
    (it then goes out as more than one bundle, which is only dearer).
    """
    pairs = list(pairs)
    while True:
        parts = [set(c) for c in components(pairs).values()]
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
                if len(components(trial)) < count:
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


def balance(state: RoundState, pairs: list[Pair]) -> list[Pair]:
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
    state: RoundState, pairs: list[Pair], onward: dict[int, list[int]]
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
