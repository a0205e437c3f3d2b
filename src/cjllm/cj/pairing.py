"""Plan comparison rounds for comparative judgement: which items meet, and who is Essay A.

Indexes only: items are ``0..n_items-1``; ids never reach the judge from here. A round is a
list of ``(essay_a, essay_b)`` index pairs in presented order. Rules, strongest first:

1. No unordered pair is repeated while an unseen pair remains among the items still within
   budget; once every such pair has been seen, only the least-seen pairs are repeated.
2. ``max_per_item`` (if given) caps each item's total comparisons, history included.
3. Each item appears at most once per round while two or more unused items remain (larger
   rounds take further passes over the items); items with fewest comparisons go first.
4. Positions stay balanced: of the two items, the one that has been Essay A more often
   (A count − B count) becomes Essay B, ties broken at random; partners are chosen so that no
   item's A − B leaves [−1, 1] when that is possible.
5. Within those rules a ``random_fraction`` of each round's pairs picks the partner uniformly
   at random (a share of pairs far apart, whose outcome shows how often the judge decides
   at random); the rest pick the
   partner maximising the expected reduction of the total posterior variance Σ_k var(θ_k)
   from one comparison (so the expected gain in reliability, 1 − mean(se²)/τ²): with the
   posterior covariance C, d = e_i − e_j and I = p(1 − p), p = σ(θ_i − θ_j), that is
   I·‖C d‖² / (1 + I·dᵀC d) (a rank-one update of C). Close scores, high uncertainty and
   items not yet linked through common opponents are preferred. Without C (``covariance``
   None) it is the reduction of var(θ_i − θ_j) alone, V²·I / (1 + V·I), V = se_i² + se_j².

The planner keeps the pair counts sparse (one dict of partners per item) and, given C, C²
(one O(n³) product per round, so C is given only up to the exact-SE limit): a round of m
pairs costs O(m · n) after one sort of the items per pass.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cjllm.cj.scoring import RngLike, _indexes

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_REPAIR_ITEMS = 6  # unused items tried when swapping partners with an already planned pair


class _Planner:
    """Mutable state of one round being planned (history plus the pairs planned so far)."""

    def __init__(
        self,
        n: int,
        first: npt.NDArray[np.intp],
        second: npt.NDArray[np.intp],
        theta: FloatArray,
        se: FloatArray,
        rng: np.random.Generator,
        cap: int | None,
        covariance: FloatArray | None = None,
    ) -> None:
        self.n, self.theta, self.se, self.rng = n, theta, se, rng
        # with the posterior covariance C, the gain of a pair needs ‖C(e_i − e_j)‖²: C² once
        self.covariance = covariance
        self.covariance_sq = None if covariance is None else covariance @ covariance
        # pair counts, sparse: met[i][j] = times i and j met (an n × n matrix is 400 MB at
        # 10,000 items, and a round of ⌊n/2⌋ pairs reads only n rows of it)
        self.met: list[dict[int, int]] = [{} for _ in range(n)]
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            self.met[a][b] = self.met[a].get(b, 0) + 1
            self.met[b][a] = self.met[b].get(a, 0) + 1
        self.count = np.bincount(first, minlength=n) + np.bincount(second, minlength=n)
        self.balance = np.bincount(first, minlength=n) - np.bincount(second, minlength=n)
        self.used = np.zeros(n, dtype=bool)
        self.cap = np.iinfo(np.int64).max if cap is None else cap
        self.plan: list[tuple[int, int]] = []
        self.pass_start = 0
        self._order: npt.NDArray[np.intp] | None = None  # the pass's focal order (see first)
        self._cursor = 0

    def apply(self, a: int, b: int, sign: int = 1) -> None:
        """Add (sign = 1) or remove (sign = −1) the comparison Essay A = a, Essay B = b."""
        for x, y in ((a, b), (b, a)):
            left = self.met[x].get(y, 0) + sign
            if left:
                self.met[x][y] = left
            else:
                del self.met[x][y]
        self.count[[a, b]] += sign
        self.balance[a] += sign
        self.balance[b] -= sign
        self.used[[a, b]] = sign > 0

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

    def compatible(self, i: int) -> BoolArray:
        """Partners j for which both A − B balances stay within [−1, 1] after orienting."""
        low = np.minimum(self.balance, self.balance[i])
        high = np.maximum(self.balance, self.balance[i])
        result: BoolArray = (low <= 0) & (high >= 0)
        return result

    def search(
        self, pool: BoolArray, level: int, balanced: bool
    ) -> tuple[int, npt.NDArray[np.intp]] | None:
        """First focal item (fewest comparisons, most unbalanced, most uncertain, random) in
        ``pool`` with partners in ``pool`` seen exactly ``level`` times (and compatible)."""
        items = np.flatnonzero(pool)
        keys = (self.rng.random(items.size), -self.se[items], -np.abs(self.balance[items]))
        return self._first(items[np.lexsort((*keys, self.count[items]))], pool, level, balanced)

    def search_fresh(
        self, fresh: BoolArray, balanced: bool
    ) -> tuple[int, npt.NDArray[np.intp]] | None:
        """:meth:`search` over the items this pass has not used, at level 0, in the pass's
        focal order: sorted once when the pass starts (the keys of an item change only when
        it is planned, which uses it; ties take a random order drawn then), and walked from
        the first item still unused, so a pair costs O(n), not a sort of every item."""
        if self._order is None:
            items = np.flatnonzero(fresh)
            keys = (self.rng.random(items.size), -self.se[items], -np.abs(self.balance[items]))
            self._order, self._cursor = items[np.lexsort((*keys, self.count[items]))], 0
        order = self._order
        while self._cursor < order.size and not fresh[order[self._cursor]]:
            self._cursor += 1  # used for the rest of this pass
        return self._first(order[self._cursor :], fresh, 0, balanced)

    def _first(
        self, ordered: npt.NDArray[np.intp], pool: BoolArray, level: int, balanced: bool
    ) -> tuple[int, npt.NDArray[np.intp]] | None:
        for i in ordered:
            if not pool[i]:
                continue
            partners = pool & (self.seen(int(i)) == level)
            partners[i] = False
            if balanced:
                partners &= self.compatible(int(i))
            if partners.any():
                return int(i), np.flatnonzero(partners)
        return None

    def choose(self, i: int, partners: npt.NDArray[np.intp], adaptive: bool) -> int:
        """Partner of ``i`` among those of ``partners`` with the fewest comparisons."""
        partners = partners[self.count[partners] == self.count[partners].min()]
        if adaptive:
            p = 1.0 / (1.0 + np.exp(self.theta[partners] - self.theta[i]))
            info = p * (1.0 - p)
            c, c2 = self.covariance, self.covariance_sq
            if c is None or c2 is None:
                var = self.se[i] ** 2 + self.se[partners] ** 2
                gain = var**2 * info / (1.0 + var * info)
            else:
                var = c[i, i] + c[partners, partners] - 2.0 * c[i, partners]
                shrink = c2[i, i] + c2[partners, partners] - 2.0 * c2[i, partners]
                gain = shrink * info / (1.0 + var * info)
            partners = partners[gain >= gain.max() * (1.0 - 1e-9)]
        return int(self.rng.choice(partners))

    def add(self, i: int, j: int) -> None:
        a, b = self.orient(i, j)
        self.apply(a, b)
        self.plan.append((a, b))

    def repair(self, fresh: BoolArray) -> bool:
        """Unused items i, j with no valid pairing: replace a planned (a, b) by (i, a), (j, b)."""
        items = np.flatnonzero(fresh)[:_REPAIR_ITEMS]
        for k in range(len(self.plan) - 1, self.pass_start - 1, -1):
            a, b = self.plan[k]
            self.apply(a, b, -1)
            ok = {int(i): (self.seen(int(i)) == 0) & self.compatible(int(i)) for i in items}
            for i, j in ((i, j) for i in ok for j in ok if i != j):
                for x, y in ((a, b), (b, a)):
                    if ok[i][x] and ok[j][y]:
                        self.plan[k] = self.orient(i, x)
                        self.apply(*self.plan[k])
                        self.add(j, y)
                        return True
            self.apply(a, b)
        return False

    def next_pair(self, adaptive: bool) -> bool:
        """Plan one more pair (possibly by repairing); False when nothing can be planned."""
        open_ = self.count < self.cap
        if open_.sum() < 2:
            return False
        fresh = open_ & ~self.used
        if fresh.sum() < 2:  # every open item has played this pass: start another pass
            self.used[:] = False
            self.pass_start = len(self.plan)
            self._order = None
            fresh = open_
        found = self.search_fresh(fresh, True)
        if found is None and self.repair(fresh):
            return True
        found = found or self.search_fresh(fresh, False)
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
        i, partners = found
        self.add(i, self.choose(i, partners, adaptive))
        return True


def plan_round(
    n_items: int,
    history_first: npt.ArrayLike,
    history_second: npt.ArrayLike,
    theta: npt.ArrayLike | None,
    se: npt.ArrayLike | None,
    n_pairs: int,
    rng: RngLike = None,
    *,
    random_fraction: float = 0.1,
    max_per_item: int | None = None,
    covariance: npt.ArrayLike | None = None,
) -> list[tuple[int, int]]:
    """Plan one round of up to ``n_pairs`` comparisons by the module rules.

    ``history_first``/``history_second``: Essay A / Essay B indexes of every comparison already
    planned (answered or pending), which fix pair counts, comparison counts and A/B balance.
    ``theta``/``se``: current ability estimates and standard errors (``None``: all 0 and all 1,
    i.e. nothing known yet); ``covariance``: their posterior covariance (n × n), for rule 5.
    ``random_fraction`` of the pairs (rounded, at random positions in the round) choose
    partners uniformly at random, the rest adaptively. ``rng``: anything
    ``np.random.default_rng`` accepts. Returns ``(essay_a, essay_b)`` pairs in presented
    order; fewer than ``n_pairs`` only when ``max_per_item`` leaves fewer than two items with
    budget. Planning is greedy (with a partner-swap repair at the end of a pass), so close to
    a complete round robin rules 3 and 4 can give way to rule 1.
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
    if max_per_item is not None and max_per_item < 1:
        raise ValueError(f"max_per_item must be >= 1, got {max_per_item}")
    gen = np.random.default_rng(rng)
    cov = None if covariance is None else np.asarray(covariance, dtype=float)
    if cov is not None and (cov.shape != (n_items, n_items) or not np.all(np.isfinite(cov))):
        raise ValueError(f"covariance must be a finite {n_items} × {n_items} matrix")
    planner = _Planner(n_items, first, second, values[0], values[1], gen, max_per_item, cov)
    random_slots = set(gen.permutation(n_pairs)[: round(random_fraction * n_pairs)].tolist())
    for slot in range(n_pairs):
        if not planner.next_pair(adaptive=slot not in random_slots):
            break
    return planner.plan


def random_round(
    n_items: int,
    history_first: npt.ArrayLike,
    history_second: npt.ArrayLike,
    n_pairs: int,
    rng: RngLike = None,
    *,
    max_per_item: int | None = None,
) -> list[tuple[int, int]]:
    """Baseline planner: ``plan_round`` with every partner drawn at random.

    The structural rules (no repeats while unseen pairs remain, budget, once per round, fewest
    comparisons first, A/B balance) still hold; only the adaptive partner choice is dropped.
    """
    return plan_round(
        n_items,
        history_first,
        history_second,
        None,
        None,
        n_pairs,
        rng,
        random_fraction=1.0,
        max_per_item=max_per_item,
    )
