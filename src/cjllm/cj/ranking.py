"""From comparison rows to scores: the per-round fit and the final ranking.

Essays are indexed by their position in the batch. Every successful comparison enters a
regularised Bradley-Terry fit (:func:`cjllm.cj.scoring.fit_bradley_terry`, prior
``bt_prior``); failed and pending ones do not. Scores are log-abilities (logits).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cjllm.cj.grades import project_grades
from cjllm.cj.records import EssayRecord, EssayResult, PairOutcome
from cjllm.cj.reliability import (
    scale_separation_reliability,
    split_half_reliability,
    splits_needed,
)
from cjllm.cj.scoring import connected_components, fit_bradley_terry
from cjllm.cj.tables import ComparisonStatus
from cjllm.contracts import RankedEssay

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class BatchFit:
    """The fit after a round: abilities, SEs and the successful comparisons behind them."""

    theta: FloatArray
    se: FloatArray
    first: IntArray
    second: IntArray
    first_won: npt.NDArray[np.bool_]
    reliability: float | None
    mean_se: float | None

    @property
    def successes(self) -> int:
        return int(self.first.size)


def seed_for(batch_id: str, *salt: int) -> list[int]:
    """A reproducible seed for a batch's random choices (pairing, split halves)."""
    digest = hashlib.sha256(batch_id.encode("utf-8")).digest()
    return [int.from_bytes(digest[:8], "big"), *salt]


def fit_outcomes(
    essays: Sequence[EssayRecord], outcomes: Sequence[PairOutcome], prior: float
) -> BatchFit:
    """Fit BT on the successful comparisons. No successes yet: θ = 0, no SE, no reliability."""
    index = {e.essay_id: e.position for e in essays}
    done = [o for o in outcomes if o.status is ComparisonStatus.SUCCEEDED]
    first = np.array([index[o.essay_a_id] for o in done], dtype=np.intp)
    second = np.array([index[o.essay_b_id] for o in done], dtype=np.intp)
    won = np.array([o.winner == "Essay A" for o in done], dtype=bool)
    n = len(essays)
    if not done:
        return BatchFit(np.zeros(n), np.full(n, np.nan), first, second, won, None, None)
    fit = fit_bradley_terry(n, first, second, won, prior=prior)
    try:
        reliability: float | None = scale_separation_reliability(fit.theta, fit.se)
    except ValueError:  # all abilities equal: reliability undefined
        reliability = None
    return BatchFit(
        theta=np.asarray(fit.theta),
        se=np.asarray(fit.se),
        first=first,
        second=second,
        first_won=won,
        reliability=reliability,
        mean_se=float(np.mean(fit.se)),
    )


def component_sizes(n_essays: int, fit: BatchFit) -> list[int]:
    """Sizes of the connected groups of the success graph (one group: scores comparable)."""
    return [len(c) for c in connected_components(n_essays, fit.first, fit.second)]


def split_half(
    fit: BatchFit, n_essays: int, prior: float, splits: int, seed: list[int]
) -> float | None:
    """Mean corrected split-half reliability over ``splits`` random halves (fewer for large
    batches: :func:`splits_needed`), or None when it is undefined: too few comparisons, a
    half with constant scores, or a split correlation of exactly −1 (which happens with a
    handful of comparisons). It is a diagnostic; it never stops a batch."""
    if fit.successes < 4:
        return None
    try:
        value = split_half_reliability(
            n_essays,
            fit.first,
            fit.second,
            fit.first_won,
            prior=prior,
            n_splits=splits_needed(n_essays, splits),
            rng=seed,
        )
    except (ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        log.warning("split-half reliability undefined for %d comparisons: %r", fit.successes, exc)
        return None
    return None if not np.isfinite(value) else float(value)


@dataclass(frozen=True)
class Ranking:
    essays: list[RankedEssay]
    rows: list[EssayResult]
    grade_message: str | None


def numeric_grade_scale(grades: Sequence[str]) -> list[str] | None:
    """Distinct grades sorted numerically when every one is a number, else None."""
    try:
        return sorted(set(grades), key=float)
    except ValueError:
        return None


def build_ranking(
    essays: Sequence[EssayRecord], fit: BatchFit, grade_scale: Sequence[str] | None
) -> Ranking:
    """Rank by score (highest first; ties by essay id), with wins, counts and, when anchors
    and a grade scale exist, each essay's most probable grade and its probability."""
    n = len(essays)
    counts = np.bincount(fit.first, minlength=n) + np.bincount(fit.second, minlength=n)
    wins = np.bincount(np.where(fit.first_won, fit.first, fit.second), minlength=n)
    se = np.nan_to_num(fit.se, nan=0.0)
    grades: list[tuple[str, float]] | None = None
    message = None
    anchors = {e.position: e.anchor_grade for e in essays if e.anchor_grade is not None}
    if anchors and grade_scale:
        try:
            grades = project_grades(fit.theta, fit.se, anchors, list(grade_scale))
        except ValueError as exc:
            message = f"grades not projected: {exc}"
    order = sorted(essays, key=lambda e: (-float(fit.theta[e.position]), e.essay_id))
    ranked: list[RankedEssay] = []
    rows: list[EssayResult] = []
    for rank, e in enumerate(order, start=1):
        i = e.position
        grade, prob = grades[i] if grades is not None else (None, None)
        ranked.append(
            RankedEssay(
                essay_id=e.essay_id,
                rank=rank,
                score=float(fit.theta[i]),
                se=float(se[i]),
                comparisons=int(counts[i]),
                wins=int(wins[i]),
                is_anchor=e.anchor_grade is not None,
                anchor_grade=e.anchor_grade,
                projected_grade=grade,
                grade_probability=prob,
            )
        )
        rows.append(EssayResult(e.essay_id, rank, float(fit.theta[i]), float(se[i]), grade, prob))
    return Ranking(ranked, rows, message)
