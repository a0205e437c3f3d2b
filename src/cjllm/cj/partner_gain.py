"""Rule 5 of :mod:`cjllm.cj.pairing`'s gains: with the covariance (:func:`covariance_gain`,
:func:`covariance_gains` and the walk by gain of :func:`by_gain`), and without it the partners
j of an item i with the largest gain V²·I / (1 + V·I), V = se_i² + se_j², I = p(1 − p),
p = σ(θ_i − θ_j), found without computing the gain of every eligible item (:class:`GainIndex`).

The gain grows with V and with I, and I = 1 / (2 + 2 cosh(θ_j − θ_i)) falls with the distance
in score, so among items with se² ≤ s (V ≤ v = se_i² + s) those farther from θ_i than the
distance where v²·I / (1 + v·I) drops below a gain g have gains below g. The items are split
into parts by se², each in score order; for a guess g (first a share of the most the pool
allows) the search takes, in each part that can reach g, the eligible items within that
distance (with a margin far above rounding error). If the best of them reaches g, it is the
best of all; else the search goes again with the best gain it found (or a lower guess). The
gains are computed by the same expression, item by item, so it returns exactly the items the
full computation selects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
TIE = 1e-9  # gains within this share of the best count as the best (ties: a random pick)
_MARGIN = 1e-6  # relative slack of the distance bound, far above rounding error
_WALK_BLOCK = 2048  # pairs by gain whose items by_gain's caller checks at once
_GUESS = 0.8  # the best gain looked for first, as a share of the most the pool allows
_NEAR_PARTS = 2  # ... in this many of the first parts with items in the pool
_NEAR = 8  # items on either side of an item's score, in each part, that set the first guess
_NEAR_WHEN = 512  # ... used when the usual first guess leaves more items in reach (mean)


def gain(theta: FloatArray, se: FloatArray, i: int, js: IndexArray) -> FloatArray:
    """Rule 5's gain of pairing ``i`` with each of ``js`` (without the covariance)."""
    p = 1.0 / (1.0 + np.exp(theta[js] - theta[i]))
    info = p * (1.0 - p)
    var = se[i] ** 2 + se[js] ** 2
    result: FloatArray = var**2 * info / (1.0 + var * info)
    return result


def covariance_gain(
    theta: FloatArray, c: FloatArray, m: FloatArray, i: int, js: IndexArray
) -> FloatArray:
    """Rule 5's gain of pairing ``i`` with each of ``js``, from the covariance C (``c``) and
    ``m`` = C W C."""
    p = 1.0 / (1.0 + np.exp(theta[js] - theta[i]))
    info = p * (1.0 - p)
    var = c[i, i] + c[js, js] - 2.0 * c[i, js]
    shrink = m[i, i] + m[js, js] - 2.0 * m[i, js]
    result: FloatArray = shrink * info / (1.0 + var * info)
    return result


def covariance_gains(theta: FloatArray, c: FloatArray, m: FloatArray) -> FloatArray:
    """Rule 5's gain of every pair (n × n), from C and C W C (the walk of :func:`by_gain`)."""
    var = np.add.outer(np.diag(c), np.diag(c)) - 2.0 * c
    shrink = np.add.outer(np.diag(m), np.diag(m)) - 2.0 * m
    p = 1.0 / (1.0 + np.exp(np.subtract.outer(theta, theta)))
    info = p * (1.0 - p)
    result: FloatArray = shrink * info / (1.0 + var * info)
    return result


def best_of(gains: FloatArray) -> npt.NDArray[np.bool_]:
    """Which of ``gains`` count as the best."""
    result: npt.NDArray[np.bool_] = gains >= gains.max() * (1.0 - TIE)
    return result


class GainIndex:
    """The items in parts by se² (largest first), each part in score order, to look for an
    item's best partners near its own score, in the parts whose se² can still reach them.

    Partners come from a pool (:attr:`pool`, a live mask of the caller's); each part's bound
    is the largest se² of its items still in the pool, found by walking the part's items in
    order of se² (call :meth:`refill` when items return to the pool)."""

    def __init__(
        self, theta: FloatArray, se: FloatArray, pool: npt.NDArray[np.bool_], parts: int = 8
    ) -> None:
        self.theta, self.se, self.pool = theta, se, pool
        self.var = se**2  # [j] equals se[j] ** 2
        by_var = np.argsort(self.var, kind="stable")
        self.parts: list[tuple[IndexArray, FloatArray, list[int]]] = []
        for part in np.array_split(by_var, max(1, min(parts, se.size // 512)))[::-1]:
            order = part[np.argsort(theta[part], kind="stable")]
            self.parts.append((order, theta[order], part[::-1].tolist()))  # se² falling
        self.tops = [0] * len(self.parts)  # per part: where its walk by se² stands
        self.in_reach = 0.0  # eligible items the usual first guess left in reach, averaged

    def refill(self) -> None:
        """Items returned to the pool: walk every part from its largest se² again."""
        self.tops = [0] * len(self.parts)

    @staticmethod
    def reach(v: float, found: float) -> float:
        """A distance in score beyond which no partner with V ≤ ``v`` has a gain ≥
        ``found``·(1 − :data:`_MARGIN`) (infinite when ``found`` gives no bound)."""
        low = found * (1.0 - _MARGIN)
        if not 0.0 < low < v:
            return math.inf
        threshold = low / (v * (v - low))  # I must reach this: 2 + 2 cosh d ≤ 1 / threshold
        return math.acosh(max(1.0, (1.0 / threshold - 2.0) / 2.0)) * (1.0 + _MARGIN) + 1e-9

    def best(self, i: int, eligible: npt.NDArray[np.bool_]) -> IndexArray:
        """The items j with ``eligible[j]`` (a subset of the pool) whose gain with ``i``
        counts as the best among all eligible items (:func:`best_of`), in index order;
        ``eligible`` must hold one."""
        # the first guess: a gain one of the nearest items reaches when the usual guess
        # has been leaving many items in reach (see _near), else infinite (see _within)
        guess = self._near(i, eligible) if self.in_reach > _NEAR_WHEN else math.inf
        measure = guess == math.inf
        while guess > 0.0:
            js, guess = self._within(i, guess, eligible)
            if measure:
                self.in_reach += (js.size - self.in_reach) / 16.0
                measure = False
            gains = self._gains(i, js)
            if js.size and (top := gains.max()) >= guess:  # the best is among them
                best = js[gains >= top * (1.0 - TIE)]
                return np.sort(best) if best.size > 1 else best
            # a gain found is one an item reaches; else look for a quarter of the guess
            guess = (
                float(gains.max()) if js.size else guess / 4.0 if 1e-6 < guess < math.inf else 0.0
            )
        js = np.flatnonzero(eligible)  # every eligible item
        return js[best_of(self._gains(i, js))]

    def _near(self, i: int, eligible: npt.NDArray[np.bool_]) -> float:
        """The best gain of the eligible items nearest to ``i`` in score (a few on either
        side, in the first parts with items in the pool), or infinite when there are none.
        As :meth:`best`'s first guess it is a gain some item reaches, so the distance bound
        starts tight. The usual guess, a share of the most the pool allows, prunes well when
        the items' se² differ (the parts' bounds differ); when they do not, as after a few
        rounds in which every essay was compared equally often, it left ~3,000 of 10,000
        essays in reach, and this guess ~50 (docs/performance.md)."""
        theta_i, pieces = self.theta[i], []
        for k, (order, scores, by_var) in enumerate(self.parts):
            if self.tops[k] < len(by_var):  # (as _within leaves them: some in the pool)
                at = int(scores.searchsorted(theta_i))
                pieces.append(order[max(0, at - _NEAR) : at + _NEAR])
                if len(pieces) == _NEAR_PARTS:
                    break
        if not pieces:
            return math.inf
        js = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        js = js[eligible[js]]
        return float(self._gains(i, js).max()) if js.size else math.inf

    def _gains(self, i: int, js: IndexArray) -> FloatArray:
        """:func:`gain`, from the squared SEs (the same values: se[js]² = (se²)[js])."""
        p = 1.0 / (1.0 + np.exp(self.theta[js] - self.theta[i]))
        info = p * (1.0 - p)
        var = self.se[i] ** 2 + self.var[js]
        result: FloatArray = var**2 * info / (1.0 + var * info)
        return result

    def _within(
        self, i: int, guess: float, eligible: npt.NDArray[np.bool_]
    ) -> tuple[IndexArray, float]:
        """The eligible items that might have a gain ≥ ``guess`` with ``i`` (and more), and
        the guess (an infinite one becomes :data:`_GUESS` of the most the pool allows)."""
        var_i, theta_i, pool, tops = float(self.var[i]), self.theta[i], self.pool, self.tops
        pieces = []
        for k, (order, scores, by_var) in enumerate(self.parts):  # by falling se²
            top = tops[k]  # the part's largest se² in the pool: walk past the others
            while top < len(by_var) and not pool[by_var[top]]:
                top += 1
            tops[k] = top
            if top == len(by_var):
                continue  # none of this part in the pool
            v = var_i + float(self.var[by_var[top]])
            most = v * v / (4.0 + v)  # the gain of V = v at an equal score: the part's most
            guess = _GUESS * most if guess == math.inf else guess
            if most < guess * (1.0 - _MARGIN):
                break  # here and in the parts after it
            far = self.reach(v, guess)
            start = int(scores.searchsorted(theta_i - far, side="left"))
            stop = int(scores.searchsorted(theta_i + far, side="right"))
            pieces.append(order[start:stop])
        js = pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else order[:0]
        return js[eligible[js]], guess


def by_gain(
    gain: FloatArray, first: int, alive: Callable[[IndexArray, IndexArray], npt.NDArray[np.bool_]]
) -> Iterator[tuple[int, int]]:
    """Every pair i < j in order of falling ``gain[i, j]``, ties in the upper triangle's
    order (as one stable sort of all pairs orders them), sorting the best ``first`` pairs
    before the rest (then 4 times as many, and so on: a round seldom walks far), without
    the pairs ``alive`` rules out when their block of :data:`_WALK_BLOCK` comes up (it must
    rule out for good what it rules out: the walk checks the rest)."""
    upper = np.triu_indices(gain.shape[0], 1)
    key = -gain[upper]
    rest, size = np.arange(key.size), first
    while rest.size:  # the next size pairs by key (ties too), sorted, before the others
        head = rest
        if size < rest.size:
            below = key[rest] <= np.partition(key[rest], size - 1)[size - 1]
            head, rest = rest[below], rest[~below]
        else:
            rest = rest[:0]
        order = head[np.argsort(key[head], kind="stable")]
        for start in range(0, order.size, _WALK_BLOCK):
            rows = upper[0][order[start : start + _WALK_BLOCK]]
            cols = upper[1][order[start : start + _WALK_BLOCK]]
            keep = alive(rows, cols)
            yield from zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)
        size *= 4
