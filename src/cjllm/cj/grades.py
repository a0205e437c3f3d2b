"""Projected grades from anchor essays with known grades, on the logit scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr


def project_grades(
    theta: npt.ArrayLike,
    se: npt.ArrayLike,
    anchor_grades: Mapping[int, str],
    grade_order: Sequence[str],
) -> list[tuple[str, float]]:
    """Most probable grade of every item, and its probability, from graded anchor items.

    ``anchor_grades`` maps anchor item index -> grade label; ``grade_order`` lists the labels
    from lowest to highest. Rule (logit scale): each grade with at least one anchor is located
    at the mean θ of its anchors (grades without anchors cannot be located and are never
    returned); these means must increase with ``grade_order``, else ``ValueError``. Boundaries
    are the midpoints between consecutive located grades, the lowest and highest intervals are
    open-ended. Item i's grade probabilities are the masses of N(θ_i, se_i²) on the intervals;
    the returned grade is the one with the largest mass (first on ties), with that mass.
    Returns one (grade, probability) per item, in item order. Requires se > 0.
    """
    t, e = np.asarray(theta, dtype=np.float64), np.asarray(se, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"theta and se must be 1-D of equal length, got {t.shape}, {e.shape}")
    if not np.all(e > 0.0):
        raise ValueError("every se must be > 0")
    labels = list(grade_order)
    if len(set(labels)) != len(labels):
        raise ValueError(f"grade_order has duplicates: {labels}")
    unknown = sorted({g for g in anchor_grades.values() if g not in labels})
    if unknown:
        raise ValueError(f"anchor grades {unknown} are not in grade_order {labels}")
    if any(not 0 <= i < t.size for i in anchor_grades):
        raise ValueError(f"anchor indexes must lie in range({t.size})")
    located = [g for g in labels if g in anchor_grades.values()]
    if not located:
        raise ValueError("no anchors given: grades cannot be located")
    means = np.array(
        [np.mean([t[i] for i, g in anchor_grades.items() if g == label]) for label in located]
    )
    for k in np.flatnonzero(np.diff(means) <= 0.0):
        raise ValueError(
            f"anchor means are out of grade order: {located[k]} at {means[k]:.3f} is not "
            f"below {located[k + 1]} at {means[k + 1]:.3f}"
        )
    edges = np.concatenate([[-np.inf], (means[:-1] + means[1:]) / 2.0, [np.inf]])
    mass = np.diff(ndtr((edges[None, :] - t[:, None]) / e[:, None]), axis=1)
    best = np.argmax(mass, axis=1)
    return [(located[k], float(mass[i, k])) for i, k in enumerate(best)]
