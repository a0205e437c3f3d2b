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
   item's A − B leaves [−1, 1] when that is possible — with the covariance, [−2, 2]
   (:data:`ADAPTIVE_BALANCE`): under ±1 an item one up (or down) cannot meet another one up
   (down), which shuts it out of about a quarter of the items, often its best partner by gain
   (docs/judgement.md, "Positions within two in adaptive rounds").
5. Within those rules a ``random_fraction`` of each round's pairs is drawn at random (pairs
   often far apart, whose outcomes show how often the judge decides at random); with
   :data:`ENOUGH_PROBES` lapse probes (rule 6) or more in the round, the probes count in it
   and only what they leave of it is drawn at random — with the service's defaults (0.1
   each) none, in rounds of 46 pairs or more (about 92 essays and up): the probes do that
   job better; in smaller rounds (25 pairs at 40 essays: 2 probes) a lapsing judge's
   intervals need both (docs/judgement.md, "Probes instead of random partners"). The rest
   maximise the expected reduction of the **squared rank errors** from one comparison.
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

import numpy as np
import numpy.typing as npt

from cjllm.cj.planner import (
    ADAPTIVE_BALANCE,
    FLOOR_SHARE,
    PROBE_PART,
    ROUND_MAX,
    FloatArray,
    Planner,
)
from cjllm.cj.scoring import RngLike, checked_indexes

ENOUGH_PROBES = 5
"""A round with this many lapse probes or more spends its random share on them (rule 5)."""

__all__ = [
    "ADAPTIVE_BALANCE",
    "ENOUGH_PROBES",
    "FLOOR_SHARE",
    "PROBE_PART",
    "ROUND_MAX",
    "plan_round",
    "random_round",
    "rank_weights",
]


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
    With ``covariance``, a ``probe_fraction`` of the pairs (rounded) are rule 6's lapse
    probes, planned first; a ``random_fraction`` of the rest (rounded; with
    :data:`ENOUGH_PROBES` probes or more, of all the pairs, less the probes), at random
    positions in the round, choose partners uniformly at random; the rest adaptively.
    ``rng``: anything
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
    # with the posterior covariance C, the gain of a pair needs (C d)ᵀW(C d): C W C once
    weighted = None if cov is None else cov @ (rank_weights(values[0], cov)[:, None] * cov)
    planner = Planner(
        n_items, first, second, values[0], values[1], gen, max_per_item, cov, weighted
    )
    probes = round(probe_fraction * n_pairs) if cov is not None else 0
    rest = n_pairs - probes
    randoms = round(random_fraction * rest)
    if probes >= ENOUGH_PROBES:  # rule 5: the probes count in the random share
        randoms = max(0, round(random_fraction * n_pairs) - probes)
    random_slots = set((gen.permutation(rest)[:randoms] + probes).tolist())
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
