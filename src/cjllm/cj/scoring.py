"""Bradley-Terry scoring for comparative judgement: fit, standard errors, evidence.

Model: comparison ``k`` presents item ``first[k]`` as "Essay A" and ``second[k]`` as "Essay B";

    P(Essay A wins) = σ(θ[first[k]] − θ[second[k]] + δ),   σ(x) = 1/(1 + e^−x),

with one log-ability θ per item and an optional order (first-position) effect δ, fixed at 0
unless fitted: the classical Bradley-Terry model. δ > 0 means the judge favours whichever
essay it reads first. The judge's lapse rate ε (P(Essay A wins) = ε/2 + (1 − ε)·σ(…)) is not
fitted here: the final fit samples it (:mod:`cjllm.cj.posterior`). Abilities are reported
sum-to-zero. All functions take plain numpy-compatible arrays of item indexes in
``range(n_items)``; item ids never enter this module. The likelihood and its solver live
in :mod:`cjllm.cj.likelihood`, the standard errors in :mod:`cjllm.cj.uncertainty`; the prior
is chosen in :mod:`cjllm.cj.population`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.linalg import lapack
from scipy.sparse import coo_matrix, csr_array
from scipy.sparse.csgraph import connected_components as _csgraph_components

from cjllm.cj.likelihood import BoolArray, FloatArray, IntArray, LogPosterior, newton
from cjllm.cj.uncertainty import EXACT_LIMIT, sum_to_zero_variances

RngLike = np.random.Generator | np.random.SeedSequence | int | Sequence[int] | None

_ML_BOUND = 30.0  # |log-ability| beyond which a maximum-likelihood fit is declared divergent


class DisconnectedGraphError(ValueError):
    """ML fit requested on a comparison graph with more than one connected component."""

    def __init__(self, components: list[list[int]]) -> None:
        self.components = components
        sizes = ", ".join(str(len(c)) for c in components[:10])
        super().__init__(
            f"comparison graph has {len(components)} connected components (sizes {sizes}); "
            "maximum-likelihood abilities are not comparable across components: "
            "add comparisons between them or fit with prior > 0"
        )


class UnboundedEstimateError(ValueError):
    """ML estimates do not exist (perfect separation): some estimate diverges to ±∞."""

    def __init__(self, reason: str, items: list[int]) -> None:
        self.items = items
        shown = ", ".join(str(i) for i in items[:20]) + (" ..." if len(items) > 20 else "")
        super().__init__(
            f"maximum-likelihood estimates do not exist: {reason} (items: {shown}); "
            "add comparisons or fit with prior > 0"
        )


@dataclass(frozen=True, eq=False)
class BTFit:
    """A fitted Bradley-Terry model (arrays are read-only).

    theta: sum-to-zero log-abilities, shape (n_items,).
    se: standard errors of ``theta``, sqrt(diag(covariance)); all > 0 (NaN when not computed).
    covariance: P·Σ·Pᵀ, shape (n_items, n_items), with Σ the reference-coded (ML) or full
        (prior > 0) inverse information matrix of the abilities and P = I − 11ᵀ/n; ``None``
        when the SEs were estimated (:mod:`cjllm.cj.uncertainty`) or not computed.
    se_error: estimated root-mean-square relative error of ``se`` (0 when exact).
    order_effect, order_effect_se: δ and its SE; ``None`` when not fitted.
    log_likelihood: Bernoulli log-likelihood of all comparisons at the estimate.
    log_evidence: for prior > 0 with exact standard errors, the Laplace approximation to the
        log marginal likelihood of the comparisons given ``prior`` and ``order_prior`` (up
        to a constant that depends on neither except the order prior);
        ``None`` otherwise.
    deviance: binomial deviance with comparisons grouped by ordered (first, second) pair.
    null_deviance: the same at θ = 0, δ = 0. df_residual: groups − (n_items − 1) −
        [δ fitted].
    n_iter, converged: Newton iterations used and whether the step tolerance was met.
    """

    theta: FloatArray
    se: FloatArray
    covariance: FloatArray | None
    se_error: float
    order_effect: float | None
    order_effect_se: float | None
    log_likelihood: float
    log_evidence: float | None
    deviance: float
    null_deviance: float
    df_residual: int
    n_iter: int
    converged: bool
    prior: float
    n_comparisons: int


def checked_indexes(
    n_items: int, first: npt.ArrayLike, second: npt.ArrayLike
) -> tuple[IntArray, IntArray]:
    """The two sides' item indexes as arrays, checked (same shape, in range, no self-pairs)."""
    if n_items < 2:
        raise ValueError(f"n_items must be at least 2, got {n_items}")
    f, s = np.asarray(first), np.asarray(second)
    if f.ndim != 1 or f.shape != s.shape:
        raise ValueError(f"first and second must be 1-D of equal length, got {f.shape}, {s.shape}")
    if f.size and not (np.issubdtype(f.dtype, np.integer) and np.issubdtype(s.dtype, np.integer)):
        raise ValueError("first and second must hold integer item indexes")
    f, s = f.astype(np.intp), s.astype(np.intp)
    if f.size and (min(f.min(), s.min()) < 0 or max(f.max(), s.max()) >= n_items):
        raise ValueError(f"item indexes must lie in range(n_items={n_items})")
    if np.any(f == s):
        raise ValueError(f"an item is compared with itself at positions {np.flatnonzero(f == s)}")
    return f, s


def checked_comparisons(
    n_items: int, first: npt.ArrayLike, second: npt.ArrayLike, first_won: npt.ArrayLike
) -> tuple[IntArray, IntArray, BoolArray]:
    """The comparisons as index and outcome arrays, checked (shapes, range, 0/1 outcomes)."""
    f, s = checked_indexes(n_items, first, second)
    y = np.asarray(first_won)
    if y.shape != f.shape:
        raise ValueError(f"first_won has shape {y.shape}, expected {f.shape}")
    if y.dtype != np.bool_ and not np.isin(y, (0, 1)).all():
        raise ValueError("first_won must be boolean (or 0/1)")
    return f, s, y.astype(bool)


def connected_components(
    n_items: int, first: npt.ArrayLike, second: npt.ArrayLike
) -> list[list[int]]:
    """Connected components of the undirected comparison graph.

    Items are vertices; each comparison (``first[k]``, ``second[k]``) is an edge. An item in
    no comparison is a component of its own. Returns the components as sorted index lists,
    largest first (ties: smallest first index). One component means the graph is connected.
    """
    f, s = checked_indexes(n_items, first, second)
    graph = coo_matrix((np.ones(f.size), (f, s)), shape=(n_items, n_items))
    count, labels = _csgraph_components(graph, directed=False)
    comps = [np.flatnonzero(labels == c).tolist() for c in range(count)]
    return sorted(comps, key=lambda c: (-len(c), c[0]))


def _check_ml_exists(n: int, f: IntArray, s: IntArray, y: BoolArray, order: bool) -> None:
    components = connected_components(n, f, s)
    if len(components) > 1:
        raise DisconnectedGraphError(components)
    winner, loser = np.where(y, f, s), np.where(y, s, f)
    wins = coo_matrix((np.ones(f.size), (winner, loser)), shape=(n, n))
    count, _ = _csgraph_components(wins, directed=True, connection="strong")
    if count > 1:  # Ford's condition: every split of the items must have wins both ways
        lost = np.bincount(loser, minlength=n) > 0
        won = np.bincount(winner, minlength=n) > 0
        extremes = np.flatnonzero(~lost | ~won).tolist()
        reason = "a group of items never lost (or never won) against the rest"
        if extremes:
            reason = "some items won every comparison or lost every comparison"
        raise UnboundedEstimateError(reason, extremes)
    if order and (y.all() or not y.any()):
        side = "Essay A" if y.all() else "Essay B"
        raise UnboundedEstimateError(f"{side} won every comparison (order effect)", [])


def fit_bradley_terry(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    prior: float = 0.0,
    order_effect: bool = False,
    order_prior: float | None = None,
    initial: BTFit | None = None,
    max_iter: int = 100,
    tol: float = 1e-9,
    standard_errors: Literal["auto", "exact", "estimated", "evidence", "none"] = "auto",
) -> BTFit:
    """Fit the Bradley-Terry model (module docstring) by Newton's method.

    Parameters: ``first[k]``/``second[k]`` are the indexes of the items shown as Essay A / B in
    comparison k and ``first_won[k]`` is True when Essay A won. ``order_effect`` adds δ.
    Estimation: ``prior == 0`` is maximum likelihood with reference coding (θ[0] = 0), reported
    centred to sum zero. ``prior > 0`` is the MAP estimate under independent N(0, 1/prior)
    priors on each θ and N(0, 1/order_prior) on δ (``order_prior`` defaults to ``prior``), so
    a MAP estimate always exists; its θ sums to zero exactly. ``initial``: a fit of the same
    items to start from (e.g. under another prior), else θ = 0, δ = 0.
    Newton steps use a dense Cholesky solve for small problems and Jacobi-preconditioned
    conjugate gradients on the sparse information matrix for large ones (to a relative
    residual of min(1e-2, last step) — inexact Newton — but at least 1e-10), with step
    halving; iteration stops when the largest parameter change is below ``tol``.
    Standard errors: Σ = inverse information of the free parameters (reference-coded for ML,
    with a zero row/column for item 0; full for MAP); ``covariance`` = P·Σ_θθ·Pᵀ with
    P = I − 11ᵀ/n; ``order_effect_se`` = sqrt(Σ_δδ) (the same under any coding).
    ``standard_errors``: "exact" inverts the information matrix densely (O(n²) memory),
    "estimated" estimates diag(covariance) without it (``se_error`` says how well), "auto"
    is exact up to ``uncertainty.EXACT_LIMIT`` items, "none" skips them (``se`` NaN), and
    "evidence" skips them but keeps ``log_evidence`` where "auto" has it (one Cholesky
    factorisation, no inverse: what a search over the prior needs at each step).
    Raises ``DisconnectedGraphError`` (ML on a disconnected comparison graph) and
    ``UnboundedEstimateError`` (ML when some split of the items has wins only one way, when
    Essay A always or never won with ``order_effect``, or when the fit still diverges).
    """
    f, s, y = checked_comparisons(n_items, first, second, first_won)
    if not (np.isfinite(prior) and prior >= 0.0):
        raise ValueError(f"prior must be a finite precision >= 0, got {prior}")
    order_prior = prior if order_prior is None else order_prior
    if not (np.isfinite(order_prior) and order_prior >= 0.0):
        raise ValueError(f"order_prior must be a finite precision >= 0, got {order_prior}")
    if max_iter < 1 or not tol > 0.0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got {max_iter}, {tol}")
    if f.size == 0 and prior == 0.0:
        raise DisconnectedGraphError([[i] for i in range(n_items)])
    if prior == 0.0:
        _check_ml_exists(n_items, f, s, y, order_effect)
    problem = LogPosterior(
        n_items, f, s, y, order=order_effect, prior=float(prior),
        order_prior=float(order_prior),
    )  # fmt: skip
    z = np.zeros(n_items + 1) if initial is None else starting_point(initial, problem)
    z, n_iter, converged = newton(problem, z, max_iter, tol)
    if prior == 0.0 and (not converged or np.max(np.abs(z)) > _ML_BOUND):
        far = np.flatnonzero(np.abs(z[:n_items] - z[:n_items].mean()) > _ML_BOUND / 2).tolist()
        raise UnboundedEstimateError("the Newton iterations diverge", far)
    theta = z[:n_items] - z[:n_items].mean()
    se, covariance, se_error, order_var = np.full(n_items, np.nan), None, 0.0, np.nan
    evidence = None
    keep = problem.free.copy()
    keep[:n_items] = True  # J over all abilities (singular along 1 for ML) and δ if fitted
    if standard_errors == "evidence":
        if prior > 0.0 and n_items <= EXACT_LIMIT:  # as "auto": no evidence above
            evidence = _laplace_evidence(problem, z, keep, prior)
    elif standard_errors != "none":
        exact = {"auto": None, "exact": True, "estimated": False}[standard_errors]
        dense = exact if exact is not None else n_items <= EXACT_LIMIT

        w = problem.weights(z)
        information: FloatArray | csr_array = (
            problem.dense_information(w, keep)  # the exact path inverts it densely anyway
            if dense
            else problem.information(w)[keep][:, keep]
        )
        variances = sum_to_zero_variances(information, n_items, exact=exact)
        se, covariance, se_error = np.sqrt(variances.theta), variances.covariance, variances.error
        order_var = float(variances.other[0]) if order_effect else np.nan
        if prior > 0.0 and variances.log_det is not None:
            # Laplace, with the θ prior normalised over the n − 1 sum-to-zero directions
            evidence = problem.objective(z) + 0.5 * n_items * np.log(prior)
            evidence -= 0.5 * variances.log_det
    for array in (theta, se) if covariance is None else (theta, se, covariance):
        array.setflags(write=False)
    log_lik = problem.log_likelihood(z)
    return BTFit(
        theta=theta,
        se=se,
        covariance=covariance,
        se_error=se_error,
        order_effect=float(z[n_items]) if order_effect else None,
        order_effect_se=float(np.sqrt(order_var)) if order_effect else None,
        log_likelihood=log_lik,
        log_evidence=evidence,
        deviance=2.0 * (problem.saturated - log_lik),
        null_deviance=2.0 * (problem.saturated + f.size * np.log(2.0)),
        df_residual=int(problem.count.size - (n_items - 1) - int(order_effect)),
        n_iter=n_iter,
        converged=converged,
        prior=float(prior),
        n_comparisons=int(f.size),
    )


def _laplace_evidence(problem: LogPosterior, z: FloatArray, keep: BoolArray, prior: float) -> float:
    """:attr:`BTFit.log_evidence` from one Cholesky factorisation of the information, no
    inverse."""
    factor, code = lapack.dpotrf(
        problem.dense_information(problem.weights(z), keep).T,
        lower=True, overwrite_a=True, clean=False,
    )  # fmt: skip
    if code != 0:
        raise np.linalg.LinAlgError("information matrix is not positive definite")
    log_det = 2.0 * float(np.sum(np.log(np.diag(factor))))
    return problem.objective(z) + 0.5 * problem.n * math.log(prior) - 0.5 * log_det


def starting_point(fit: BTFit, problem: LogPosterior) -> FloatArray:
    """A previous fit as a starting point z for ``problem``."""
    if fit.theta.shape != (problem.n,):
        raise ValueError(f"initial fit has {fit.theta.size} items, expected {problem.n}")
    z = np.zeros(problem.n + 1)
    z[: problem.n] = fit.theta if problem.free[0] else fit.theta - fit.theta[0]
    if problem.free[problem.n] and fit.order_effect is not None:
        z[problem.n] = fit.order_effect
    return z


def reference_coded(fit: BTFit, reference: int = 0) -> tuple[FloatArray, FloatArray]:
    """Abilities and SEs relative to ``reference`` (its θ and SE are 0).

    Returns (θ − θ[reference], sqrt(C_ii + C_rr − 2·C_ir)) with C = ``fit.covariance``: the
    variance of the contrast θ_i − θ_r, which is the same under any identifying coding.
    """
    c = fit.covariance
    if c is None:
        raise ValueError("the fit kept no covariance: refit with standard_errors='exact'")
    if not 0 <= reference < c.shape[0]:
        raise ValueError(f"reference must lie in range({c.shape[0]}), got {reference}")
    var = np.diag(c) + c[reference, reference] - 2.0 * c[:, reference]
    var[reference] = 0.0
    return fit.theta - fit.theta[reference], np.sqrt(np.maximum(var, 0.0))
