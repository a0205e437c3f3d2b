"""The state of one round being planned by :func:`cjllm.cj.pairing.plan_round`, whose module
docstring holds the rules: the history's counts, the pairs planned so far, and masks over the
items kept up to date pair by pair (open, unused this pass, A − B sign), so a pair costs a few
passes over the items rather than a score of fresh arrays.

Indexes only, items ``0..n-1``. Every choice and every draw from the generator is part of the
plans' contract (``tests/cj/test_plan_oracle.py``): a faster path must pick the same pairs.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cjllm.cj.partner_gain import (
    GainIndex,
    best_of,
    by_gain,
    covariance_gain,
    covariance_gains,
    gain,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]
Found = tuple[int, BoolArray, tuple[int, bool] | None]  # focal, partners, see least_fresh
_REPAIR_ITEMS = 6  # unused items tried when swapping partners with an already planned pair
ROUND_MAX = 2  # with the covariance: the most comparisons an item gets in one round (rule 3)
ADAPTIVE_BALANCE = 2  # ... and the bound on each item's A − B (rule 4; without it: 1)
FLOOR_SHARE = 0.5  # ... and the floor, as a share of the mean comparisons per item (rule 3)
PROBE_PART = 0.25  # rule 6: probes pair the top and the bottom quarter by current score


class Planner:
    """Mutable state of one round being planned (history plus the pairs planned so far).

    ``covariance``: the posterior covariance C (rule 5), with ``weighted`` = C W C."""

    def __init__(
        self,
        n: int,
        first: IndexArray,
        second: IndexArray,
        theta: FloatArray,
        se: FloatArray,
        rng: np.random.Generator,
        cap: int | None,
        covariance: FloatArray | None = None,
        weighted: FloatArray | None = None,
    ) -> None:
        self.n, self.theta, self.se, self.rng = n, theta, se, rng
        self.covariance, self.weighted = covariance, weighted
        # pair counts, sparse: met[i][j] = times i and j met (an n × n matrix is 400 MB at
        # 10,000 items, and a round of ⌊n/2⌋ pairs reads only n rows of it)
        self.met: list[dict[int, int]] = [{} for _ in range(n)]
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            self.met[a][b] = self.met[a].get(b, 0) + 1
            self.met[b][a] = self.met[b].get(a, 0) + 1
        self.count = np.bincount(first, minlength=n) + np.bincount(second, minlength=n)
        self.balance = np.bincount(first, minlength=n) - np.bincount(second, minlength=n)
        self.degree = np.zeros(n, dtype=np.int64)  # comparisons planned in this round
        self.cap = int(np.iinfo(np.int64).max) if cap is None else cap
        self.plan: list[tuple[int, int]] = []
        self.pass_start = 0
        self._order: list[int] | None = None  # the pass's focal order (see search_fresh)
        self._cursor = 0
        # kept by apply: open = within budget, fresh = open and unused this pass, and the
        # balance's sign (for compatible partners), with the counts of open and fresh items
        self.open = self.count < self.cap
        self.fresh = self.open.copy()
        self.n_open = self.n_fresh = int(self.open.sum())
        self.nonpositive = self.balance <= 0
        self.nonnegative = self.balance >= 0
        self._mask = np.empty(n, dtype=bool)  # scratch for partner masks
        # fresh items by the sign of A − B (0: < 0, 1: = 0, 2: > 0): {comparisons: items}
        self.tally: list[dict[int, int]] = [{}, {}, {}]
        self._count_tally()
        self.gain_index = None if covariance is not None else GainIndex(theta, se, self.fresh)

    def apply(self, a: int, b: int, sign: int = 1) -> None:
        """Add (sign = 1) or remove (sign = −1) the comparison Essay A = a, Essay B = b."""
        fresh, met = self.fresh, self.met
        for x, y in ((a, b), (b, a)):
            left = met[x].get(y, 0) + sign
            if left:
                met[x][y] = left
            else:
                del met[x][y]
        for x, step in ((a, sign), (b, -sign)):
            count, side = int(self.count[x]), int(self.balance[x])
            if fresh[x]:
                self._tally(side, count, -1)
            count += sign
            side += step
            self.count[x], self.balance[x] = count, side
            self.degree[x] += sign
            is_open = count < self.cap
            if is_open != self.open[x]:
                self.open[x] = is_open
                self.n_open += 1 if is_open else -1
            if is_open and sign < 0:
                self.n_fresh += 0 if fresh[x] else 1
                fresh[x] = True
                self._tally(side, count, 1)
                if self.gain_index is not None:
                    self.gain_index.refill()
            elif fresh[x]:
                self.n_fresh -= 1
                fresh[x] = False
            self.nonpositive[x] = side <= 0
            self.nonnegative[x] = side >= 0

    def _tally(self, side: int, count: int, step: int) -> None:
        """Count a fresh item of balance sign ``side`` and ``count`` comparisons in (step 1)
        or out (step −1) of :attr:`tally`."""
        tally = self.tally[1 if side == 0 else 2 if side > 0 else 0]
        left = tally.get(count, 0) + step
        if left:
            if left == step:
                self._least.clear()  # a new count
            tally[count] = left
        else:
            del tally[count]
            self._least.clear()

    def _count_tally(self) -> None:
        items = np.flatnonzero(self.fresh)
        sides = np.sign(self.balance[items]) + 1
        for side in range(3):
            counts, sizes = np.unique(self.count[items[sides == side]], return_counts=True)
            self.tally[side] = dict(zip(counts.tolist(), sizes.tolist(), strict=True))
        self._least: dict[tuple[int, ...], tuple[int, bool] | None] = {}  # least_fresh's

    def new_pass(self) -> None:
        """Every open item has played this pass: all of them are fresh again."""
        self.fresh[:] = self.open
        self.n_fresh = self.n_open
        self.pass_start = len(self.plan)
        self._order = None
        self._count_tally()
        if self.gain_index is not None:
            self.gain_index.refill()

    def seen(self, i: int) -> npt.NDArray[np.int32]:
        """Row ``i`` of the pair counts: how often ``i`` met each item."""
        row = np.zeros(self.n, dtype=np.int32)
        if self.met[i]:
            row[list(self.met[i])] = list(self.met[i].values())
        return row

    def orient(self, i: int, j: int) -> tuple[int, int]:
        """(Essay A, Essay B): whoever has been Essay A more often goes second."""
        if self.balance[i] == self.balance[j]:
            return (i, j) if self.rng.random() < 0.5 else (j, i)
        return (j, i) if self.balance[i] > self.balance[j] else (i, j)

    def compatible(self, i: int, bound: int = 1) -> BoolArray | None:
        """Partners j for which both A − B stay within ±``bound`` after orienting (None: every
        item; with bound 1 a live mask: read it before the next pair is added)."""
        side = int(self.balance[i])
        if -bound < side < bound:
            return None
        if bound == 1:
            return self.nonpositive if side > 0 else self.nonnegative
        return self.balance < bound if side > 0 else self.balance > -bound

    def fits(self, i: int, j: int) -> bool:
        """``i`` and ``j`` have not met and their balances stay within [−1, 1] together."""
        low, high = sorted((self.balance[i], self.balance[j]))
        return j not in self.met[i] and low <= 0 <= high

    def unseen(self, i: int, pool: BoolArray, balanced: bool, bound: int = 1) -> BoolArray:
        """Items of ``pool`` other than ``i`` that ``i`` has not met (and compatible with
        ``i`` within ``bound`` when ``balanced``), in a scratch mask: read it before the
        next call."""
        compatible = self.compatible(i, bound) if balanced else None
        if compatible is None:
            np.copyto(self._mask, pool)
        else:
            np.logical_and(pool, compatible, out=self._mask)
        if self.met[i]:
            self._mask[list(self.met[i])] = False
        self._mask[i] = False
        return self._mask

    def _focal(self, items: IndexArray) -> list[int]:
        """``items`` in focal order: fewest comparisons, most unbalanced, most uncertain, random."""
        keys = (self.rng.random(items.size), -self.se[items], -np.abs(self.balance[items]))
        order: list[int] = items[np.lexsort((*keys, self.count[items]))].tolist()
        return order

    def search(self, pool: BoolArray, level: int, balanced: bool) -> Found | None:
        """First focal item (:meth:`_focal`) in ``pool`` with partners in ``pool`` seen
        exactly ``level`` times (and compatible)."""
        return self._first(self._focal(np.flatnonzero(pool)), pool, level, balanced)

    def search_fresh(self, balanced: bool) -> Found | None:
        """:meth:`search` over the items this pass has not used, at level 0, in the pass's
        focal order: sorted once when the pass starts (the keys of an item change only when
        it is planned, which uses it; ties take a random order drawn then), and walked from
        the first item still unused, so a pair costs O(n), not a sort of every item."""
        fresh = self.fresh
        if self._order is None:
            self._order, self._cursor = self._focal(np.flatnonzero(fresh)), 0
        order = self._order
        while self._cursor < len(order) and not fresh[order[self._cursor]]:
            self._cursor += 1  # used for the rest of this pass
        return self._first(order, fresh, 0, balanced, self._cursor)

    def _first(
        self, ordered: list[int], pool: BoolArray, level: int, balanced: bool, start: int = 0
    ) -> Found | None:
        fresh = pool is self.fresh and level == 0 and self.gain_index is not None
        for k in range(start, len(ordered)):
            i = ordered[k]
            if not pool[i]:
                continue
            if level == 0:
                partners = self.unseen(int(i), pool, balanced)
            else:
                partners = pool & (self.seen(int(i)) == level)
                partners[i] = False
                if balanced and (compatible := self.compatible(int(i))) is not None:
                    partners &= compatible
            least = None
            if fresh:  # which balances i may meet: A − B < 0, = 0, > 0 (see tally)
                side = int(self.balance[i]) if balanced else 0
                least = self.least_fresh(
                    int(i), (0, 1) if side > 0 else (1, 2) if side < 0 else (0, 1, 2)
                )
            if least is not None or partners.any():
                return int(i), partners, least
        return None

    def least_fresh(self, i: int, sides: tuple[int, ...]) -> tuple[int, bool] | None:
        """The fewest comparisons among ``i``'s partners in the fresh pool (those of the
        balance ``sides``, other than ``i`` and the items it met), from the fresh items'
        tally, and whether every such fresh item has that many; None when the items left
        out might be all of those with the fewest (then the partners must be counted)."""
        if (known := self._least.get(sides)) is None:  # the tally's counts have changed
            counts = {count for side in sides for count in self.tally[side]}
            known = self._least[sides] = (min(counts), len(counts) == 1) if counts else None
        if known is None:
            return None
        items = 0
        for side in sides:
            items += self.tally[side].get(known[0], 0)
        return known if items > 1 + len(self.met[i]) else None

    def choose(
        self, i: int, partners: BoolArray, least: tuple[int, bool] | None, adaptive: bool
    ) -> int:
        """Partner of ``i`` among the ``partners`` (a mask, overwritten) with the fewest
        comparisons (``least``: see :meth:`least_fresh`; None: count them): rule 5's best for
        ``adaptive``, else one at random."""
        if least is None:
            return self._choose(i, np.flatnonzero(partners), adaptive)
        if not least[1]:
            partners &= self.count == least[0]
        if adaptive and self.gain_index is not None:
            js = self.gain_index.best(i, partners)
        else:
            js = np.flatnonzero(partners)
        return int(js[self.rng.integers(0, js.size)])  # the draw rng.choice(js) makes

    def _choose(self, i: int, partners: IndexArray, adaptive: bool) -> int:
        partners = partners[self.count[partners] == self.count[partners].min()]
        if adaptive:
            c, m = self.covariance, self.weighted
            if c is None or m is None:
                partners = partners[best_of(gain(self.theta, self.se, i, partners))]
            else:
                partners = partners[best_of(covariance_gain(self.theta, c, m, i, partners))]
        return int(self.rng.choice(partners))

    def allocate(self, n_pairs: int, random_slots: set[int]) -> None:
        """Rule 3 with the covariance: plan up to ``n_pairs`` unseen pairs, the floor's items
        first, then every pair in order of gain, at most :data:`ROUND_MAX` per item (the
        caller's :meth:`next_pair` fills whatever this leaves, e.g. repeats)."""
        c, m = self.covariance, self.weighted
        assert c is not None and m is not None
        gain, n = covariance_gains(self.theta, c, m), self.n
        floor = FLOOR_SHARE * (self.count.sum() + 2 * (n_pairs - len(self.plan))) / n

        def partners(i: int) -> IndexArray:
            pool = self.open & (self.degree < ROUND_MAX)
            return np.flatnonzero(self.unseen(i, pool, True, ADAPTIVE_BALANCE))

        def pick(i: int, js: IndexArray) -> None:
            random = len(self.plan) in random_slots
            self.add(i, int(self.rng.choice(js) if random else js[np.argmax(gain[i, js])]))

        below = np.flatnonzero((self.count < floor) & self.open)
        for i in below[np.lexsort((self.rng.random(below.size), self.count[below]))].tolist():
            if len(self.plan) < n_pairs and self.degree[i] == 0 and (js := partners(i)).size:
                pick(i, js)

        def alive(rows: IndexArray, cols: IndexArray) -> BoolArray:  # stays false once false
            ok: BoolArray = np.maximum(self.degree[rows], self.degree[cols]) < ROUND_MAX
            return ok & self.open[rows] & self.open[cols]

        walk = by_gain(gain, 64 * n, alive)
        # the walk reads these for every pair it passes: plain lists, kept with each pair added
        degree, is_open, balance = (x.tolist() for x in (self.degree, self.open, self.balance))
        while len(self.plan) < n_pairs:
            for x in self.plan[-1] if self.plan else ():
                degree[x], is_open[x], balance[x] = (
                    int(self.degree[x]),
                    bool(self.open[x]),
                    int(self.balance[x]),
                )
            if self.n_open < 2:
                return
            if len(self.plan) in random_slots:  # a random partner for a least-used item
                least = self.degree[self.open].min()
                items = np.flatnonzero(self.open & (self.degree == least))
                found = next(((i, js) for i in self.rng.permutation(items).tolist()
                              if (js := partners(i)).size), None)  # fmt: skip
                if found is None:
                    return
                pick(*found)
                continue
            for i, j in walk:
                low, high = sorted((balance[i], balance[j]))
                if (
                    max(degree[i], degree[j]) < ROUND_MAX
                    and is_open[i]
                    and is_open[j]
                    and low < ADAPTIVE_BALANCE
                    and high > -ADAPTIVE_BALANCE
                    and j not in self.met[i]
                ):
                    self.add(i, j)
                    break
            else:
                return

    def probe(self, n_probes: int) -> None:
        """Rule 6: plan up to ``n_probes`` pairs between the top and the bottom
        :data:`PROBE_PART` of the items by score (fewer when no such pair is left)."""
        part = max(1, math.ceil(PROBE_PART * self.n))
        if 2 * part > self.n:
            return
        order = np.argsort(self.theta, kind="stable")
        side = np.zeros(self.n, dtype=np.int64)
        side[order[:part]], side[order[-part:]] = -1, 1
        for _ in range(n_probes):
            ok = (side != 0) & self.open & (self.degree < ROUND_MAX)
            items = np.flatnonzero(ok)
            keys = (self.rng.random(items.size), self.count[items])
            for i in items[np.lexsort(keys)].tolist():
                js = np.flatnonzero(self.unseen(i, ok & (side == -side[i]), True))
                if js.size:
                    far = -np.abs(self.theta[js] - self.theta[i])
                    self.add(i, int(js[np.lexsort((far, self.count[js]))[0]]))
                    break
            else:
                return

    def add(self, i: int, j: int) -> None:
        a, b = self.orient(i, j)
        self.apply(a, b)
        self.plan.append((a, b))

    def repair(self) -> bool:
        """Unused items i, j with no valid pairing: replace a planned (a, b) by (i, a), (j, b)."""
        items = np.flatnonzero(self.fresh)[:_REPAIR_ITEMS].tolist()
        for k in range(len(self.plan) - 1, self.pass_start - 1, -1):
            a, b = self.plan[k]
            self.apply(a, b, -1)
            for i, j in ((i, j) for i in items for j in items if i != j):
                for x, y in ((a, b), (b, a)):
                    if self.fits(i, x) and self.fits(j, y):
                        self.plan[k] = self.orient(i, x)
                        self.apply(*self.plan[k])
                        self.add(j, y)
                        return True
            self.apply(a, b)
        return False

    def next_pair(self, adaptive: bool) -> bool:
        """Plan one more pair (possibly by repairing); False when nothing can be planned."""
        if self.n_open < 2:
            return False
        if self.n_fresh < 2:  # every open item has played this pass: start another pass
            self.new_pass()
        fresh, open_ = self.fresh, self.open
        found = self.search_fresh(True)
        if found is None and self.repair():
            return True
        found = found or self.search_fresh(False)
        for pool, balanced in ((open_, True), (open_, False)):
            found = found or self.search(pool, 0, balanced)
        if found is None:  # every pair among open items seen: repeat the least-seen pairs
            for pool in (fresh, open_):
                if found is not None:
                    break
                idx = np.flatnonzero(pool).tolist()  # few: every pair among them has met
                sub = np.array([[self.met[i].get(j, 0) for j in idx] for i in idx], np.int64)
                sub[np.diag_indices_from(sub)] = np.iinfo(np.int64).max
                for balanced in (True, False):
                    found = found or self.search(pool, int(sub.min()), balanced)
        if found is None:
            return False
        self.add(found[0], self.choose(*found, adaptive))
        return True
