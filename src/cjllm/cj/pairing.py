"""Plan comparison rounds for comparative judgement: which items meet, and who is Essay A.

Indexes only: items are ``0..n_items-1``; ids never reach the judge from here. A round is a
list of ``(essay_a, essay_b)`` index pairs in presented order. Rules, strongest first:

1. No unordered pair is repeated while an unseen pair remains among the items still within
   budget; once every such pair has been seen, only the least-seen pairs are repeated.
2. ``max_per_item`` (if given) caps each item's total comparisons, history included.
3. Allocation. Without the posterior covariance (``covariance`` None: nothing fitted yet,
   random pairing, or more items than the exact-SE limit) each item appears at most once
   per round while two or more unused items remain (larger rounds take further passes),
   items with fewest comparisons first: every item gets the same number of comparisons.
   With it, the budget goes where it changes the ranking: an item plays 0 to
   :data:`ROUND_MAX` times in a round, but an item whose comparisons would fall below the
   **floor** — :data:`FLOOR_SHARE` of the mean comparisons per item after the round — plays
   first (fewest comparisons first, while the round has room), so nobody starves.
4. Positions stay balanced: of the two items, the one that has been Essay A more often
   (A count − B count) becomes Essay B, ties broken at random; partners are chosen so that no
   item's A − B leaves [−1, 1] when that is possible.
5. Within those rules a ``random_fraction`` of each round's pairs is drawn at random (a
   share of pairs far apart, whose outcome shows how often the judge decides at random); the
   rest maximise the expected reduction of the **squared rank errors** from one comparison.
   With the posterior covariance C, d = e_i − e_j and I = p(1 − p), p = σ(θ_i − θ_j), a
   comparison shrinks C by the rank-one I·C d dᵀC / (1 + I·dᵀC d); an item's rank error is
   about its score error times the density f_k of the other items' scores at its own (how
   many it would pass by moving: f_k = Σ_l φ((θ_k − θ_l)/s_kl)/s_kl, s_kl² = C_kk + C_ll),
   so the gain is I·(C d)ᵀ W (C d) / (1 + I·dᵀC d), W = diag(f_k²). Items crowded together
   with uncertain order gain most; items already far from their neighbours (the ends of the
   scale) little, and under rule 3 they sit out more rounds. With C, the round takes the
   pairs in order of gain over all pairs (a greedy matching: the floor's items first, each
   with its best partner). Without C, each item in turn takes the partner maximising the
   reduction of var(θ_i − θ_j) alone, V²·I / (1 + V·I), V = se_i² + se_j².
6. Lapse probes (with C only; the service's default share is 0.1): a ``probe_fraction`` of
   each round's pairs, planned first, pair the top :data:`PROBE_PART` of the items by current
   score with the bottom one — the item of those parts with fewest comparisons, with the
   partner in the opposite part that has fewest comparisons, farthest in score among those.
   Rules 1, 2, 4 and the per-round :data:`ROUND_MAX` hold for them as for any pair. A judge that
   knows which essay is better almost never reverses such a pair; one that decides at
   random a share ε of the time reverses ε/2 of them, while close pairs (which rule 5
   chooses) cannot tell a lapse from a narrower scale. The trade-off (more honest intervals
   under a lapsing judge, less accurate ranks) is measured in docs/judgement.md.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cjllm.cj.scoring import RngLike, checked_indexes

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_REPAIR_ITEMS = 6  # unused items tried when swapping partners with an already planned pair
ROUND_MAX = 2  # with the covariance: the most comparisons an item gets in one round (rule 3)
FLOOR_SHARE = 0.5  # ... and the floor, as a share of the mean comparisons per item (rule 3)
PROBE_PART = 0.25  # rule 6: probes pair the top and the bottom quarter by current score


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
        # with the posterior covariance C, the gain of a pair needs (C d)ᵀW(C d): C W C once
        self.covariance = covariance
        self.weighted = None
        if covariance is not None:
            self.weighted = covariance @ (rank_weights(theta, covariance)[:, None] * covariance)
        # pair counts, sparse: met[i][j] = times i and j met (an n × n matrix is 400 MB at
        # 10,000 items, and a round of ⌊n/2⌋ pairs reads only n rows of it)
        self.met: list[dict[int, int]] = [{} for _ in range(n)]
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            self.met[a][b] = self.met[a].get(b, 0) + 1
            self.met[b][a] = self.met[b].get(a, 0) + 1
        self.count = np.bincount(first, minlength=n) + np.bincount(second, minlength=n)
        self.balance = np.bincount(first, minlength=n) - np.bincount(second, minlength=n)
        self.used = np.zeros(n, dtype=bool)
        self.degree = np.zeros(n, dtype=np.int64)  # comparisons planned in this round
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
        self.degree[[a, b]] += sign

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
            c, m = self.covariance, self.weighted
            if c is None or m is None:
                var = self.se[i] ** 2 + self.se[partners] ** 2
                gain = var**2 * info / (1.0 + var * info)
            else:
                var = c[i, i] + c[partners, partners] - 2.0 * c[i, partners]
                shrink = m[i, i] + m[partners, partners] - 2.0 * m[i, partners]
                gain = shrink * info / (1.0 + var * info)
            partners = partners[gain >= gain.max() * (1.0 - 1e-9)]
        return int(self.rng.choice(partners))

    def gains(self) -> FloatArray:
        """Rule 5's gain of every pair (n × n), from C and C W C."""
        c, m = self.covariance, self.weighted
        assert c is not None and m is not None
        var = np.add.outer(np.diag(c), np.diag(c)) - 2.0 * c
        shrink = np.add.outer(np.diag(m), np.diag(m)) - 2.0 * m
        p = 1.0 / (1.0 + np.exp(np.subtract.outer(self.theta, self.theta)))
        info = p * (1.0 - p)
        gain: FloatArray = shrink * info / (1.0 + var * info)
        return gain

    def allocate(self, n_pairs: int, random_slots: set[int]) -> None:
        """Rule 3 with the covariance: plan up to ``n_pairs`` unseen pairs, the floor's items
        first, then every pair in order of gain, at most :data:`ROUND_MAX` per item (the
        caller's :meth:`next_pair` fills whatever this leaves, e.g. repeats)."""
        gain, n = self.gains(), self.n
        floor = FLOOR_SHARE * (self.count.sum() + 2 * (n_pairs - len(self.plan))) / n

        def partners(i: int) -> npt.NDArray[np.intp]:
            ok = (self.count < self.cap) & (self.degree < ROUND_MAX) & (self.seen(i) == 0)
            ok &= self.compatible(i)
            ok[i] = False
            return np.flatnonzero(ok)

        def pick(i: int, js: npt.NDArray[np.intp]) -> None:
            random = len(self.plan) in random_slots
            self.add(i, int(self.rng.choice(js) if random else js[np.argmax(gain[i, js])]))

        below = np.flatnonzero((self.count < floor) & (self.count < self.cap))
        for i in below[np.lexsort((self.rng.random(below.size), self.count[below]))].tolist():
            if len(self.plan) < n_pairs and self.degree[i] == 0 and (js := partners(i)).size:
                pick(i, js)
        upper = np.triu_indices(n, 1)
        order = np.argsort(-gain[upper], kind="stable")
        walk = zip(upper[0][order].tolist(), upper[1][order].tolist(), strict=True)
        while len(self.plan) < n_pairs:
            open_ = self.count < self.cap
            if open_.sum() < 2:
                return
            if len(self.plan) in random_slots:  # a random partner for a least-used item
                items = np.flatnonzero(open_ & (self.degree == self.degree[open_].min()))
                found = next(((i, js) for i in self.rng.permutation(items).tolist()
                              if (js := partners(i)).size), None)  # fmt: skip
                if found is None:
                    return
                pick(*found)
                continue
            for i, j in walk:
                low, high = sorted((self.balance[i], self.balance[j]))
                if (
                    max(self.degree[i], self.degree[j]) < ROUND_MAX
                    and max(self.count[i], self.count[j]) < self.cap
                    and j not in self.met[i]
                    and low <= 0 <= high
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
            ok = (side != 0) & (self.count < self.cap) & (self.degree < ROUND_MAX)
            items = np.flatnonzero(ok)
            keys = (self.rng.random(items.size), self.count[items])
            for i in items[np.lexsort(keys)].tolist():
                js = np.flatnonzero(ok & (side == -side[i]) & (self.seen(i) == 0))
                js = js[self.compatible(i)[js]]
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
    probe_fraction: float = 0.0,
) -> list[tuple[int, int]]:
    """Plan one round of up to ``n_pairs`` comparisons by the module rules.

    ``history_first``/``history_second``: Essay A / Essay B indexes of every comparison already
    planned (answered or pending), which fix pair counts, comparison counts and A/B balance.
    ``theta``/``se``: current ability estimates and standard errors (``None``: all 0 and all 1,
    i.e. nothing known yet); ``covariance``: their posterior covariance (n × n), for rule 5.
    ``random_fraction`` of the pairs (rounded, at random positions in the round) choose
    partners uniformly at random, the rest adaptively; with ``covariance``, a
    ``probe_fraction`` of the pairs (rounded) are rule 6's lapse probes, planned first
    (``random_fraction`` then applies to the rest). ``rng``: anything
    ``np.random.default_rng`` accepts. Returns ``(essay_a, essay_b)`` pairs in presented
    order; fewer than ``n_pairs`` only when ``max_per_item`` leaves fewer than two items with
    budget. Planning is greedy (with a partner-swap repair at the end of a pass), so close to
    a complete round robin rules 3 and 4 can give way to rule 1.
    """
    first, second = checked_indexes(n_items, history_first, history_second)
    values = []
    for name, given, default in (("theta", theta, 0.0), ("se", se, 1.0)):
        array = np.full(n_items, default) if given is None else np.asarray(given, dtype=float)
        if array.shape != (n_items,) or not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must hold {n_items} finite values, got shape {array.shape}")
        values.append(array)
    if n_pairs < 0 or not 0.0 <= random_fraction <= 1.0 or not 0.0 <= probe_fraction <= 1.0:
        raise ValueError("n_pairs must be >= 0, random_fraction and probe_fraction in [0, 1]")
    if max_per_item is not None and max_per_item < 1:
        raise ValueError(f"max_per_item must be >= 1, got {max_per_item}")
    gen = np.random.default_rng(rng)
    cov = None if covariance is None else np.asarray(covariance, dtype=float)
    if cov is not None and (cov.shape != (n_items, n_items) or not np.all(np.isfinite(cov))):
        raise ValueError(f"covariance must be a finite {n_items} × {n_items} matrix")
    planner = _Planner(n_items, first, second, values[0], values[1], gen, max_per_item, cov)
    probes = round(probe_fraction * n_pairs) if cov is not None else 0
    rest = n_pairs - probes
    random_slots = set((gen.permutation(rest)[: round(random_fraction * rest)] + probes).tolist())
    if cov is not None:
        planner.probe(probes)
        planner.allocate(n_pairs, random_slots)
    for slot in range(len(planner.plan), n_pairs):
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


def rank_weights(theta: FloatArray, covariance: FloatArray) -> FloatArray:
    """Rule 5's W: f_k², f_k the density of the other items' scores at item k's own (each
    blurred by the two items' uncertainty), scaled to mean 1: an error e in θ_k moves k's
    rank by about f_k·e, so Σ_k f_k² var(θ_k) is the expected sum of squared rank errors."""
    var = np.diag(covariance)
    s = np.sqrt(np.add.outer(var, var))
    density = np.exp(-0.5 * (np.subtract.outer(theta, theta) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    np.fill_diagonal(density, 0.0)
    weight: FloatArray = density.sum(axis=1) ** 2
    return weight / weight.mean() if weight.mean() > 0 else np.ones_like(theta)
