"""Bradley-Terry scoring for comparative judgement: fit, standard errors, reliability, grades.

Model: comparison ``k`` presents item ``first[k]`` as "Essay A" and ``second[k]`` as "Essay B";

    P(Essay A wins) = σ(θ[first[k]] − θ[second[k]] + δ),   σ(x) = 1 / (1 + exp(−x)),

with one log-ability θ per item and an optional order (first-position, "home") effect δ,
fixed at 0 unless fitted. δ > 0 means the judge favours whichever essay it reads first.
Abilities are reported sum-to-zero. All functions take plain numpy-compatible arrays of item
indexes in ``range(n_items)``; item ids never enter this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse import coo_array, coo_matrix, csr_array
from scipy.sparse.csgraph import connected_components as _csgraph_components
from scipy.special import expit, xlogy

from cjllm.cj.uncertainty import sum_to_zero_variances

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
RngLike = np.random.Generator | np.random.SeedSequence | int | Sequence[int] | None

_DENSE_LIMIT = 400  # parameter count up to which Newton steps use a dense Cholesky solve
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
    deviance: binomial deviance with comparisons grouped by ordered (first, second) pair.
    null_deviance: the same at θ = 0, δ = 0. df_residual: groups − (n_items − 1) − [δ fitted].
    n_iter, converged: Newton iterations used and whether the step tolerance was met.
    """

    theta: FloatArray
    se: FloatArray
    covariance: FloatArray | None
    se_error: float
    order_effect: float | None
    order_effect_se: float | None
    log_likelihood: float
    deviance: float
    null_deviance: float
    df_residual: int
    n_iter: int
    converged: bool
    prior: float
    n_comparisons: int


def _sum_by(index: IntArray, values: FloatArray, size: int) -> FloatArray:
    """Sums of ``values`` grouped by ``index`` (0..size-1)."""
    return np.bincount(index, values, size).astype(np.float64, copy=False)


def _indexes(
    n_items: int, first: npt.ArrayLike, second: npt.ArrayLike
) -> tuple[IntArray, IntArray]:
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


def _comparisons(
    n_items: int, first: npt.ArrayLike, second: npt.ArrayLike, first_won: npt.ArrayLike
) -> tuple[IntArray, IntArray, BoolArray]:
    f, s = _indexes(n_items, first, second)
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
    f, s = _indexes(n_items, first, second)
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


def _dot(a: FloatArray, b: FloatArray) -> float:
    """a·b without BLAS: a threaded ddot stalls for milliseconds on a busy machine, and these
    reductions run in every conjugate-gradient and line-search step."""
    return float(np.einsum("i,i->", a, b))


def _log_sigmoid(x: FloatArray) -> FloatArray:
    return -np.logaddexp(0.0, -x)


class _Problem:
    """Grouped comparisons and the penalised log-likelihood of z = (θ_0..θ_{n-1}, δ).

    δ is always the last coordinate; it and (for ML) θ_0 stay fixed at 0 unless ``free``.
    """

    def __init__(self, n: int, f: IntArray, s: IntArray, y: BoolArray, order: bool, prior: float):
        uniq, inverse = np.unique(f * n + s, return_inverse=True)
        self.n, self.prior, self.gf, self.gs = n, prior, uniq // n, uniq % n
        self.count = _sum_by(inverse, np.ones(f.size), uniq.size)
        self.wins = _sum_by(inverse, y.astype(np.float64), uniq.size)
        losses = self.count - self.wins
        self.saturated = float(np.sum(xlogy(self.wins, self.wins / self.count)))
        self.saturated += float(np.sum(xlogy(losses, losses / self.count)))
        self.free = np.ones(n + 1, dtype=bool)
        self.free[0], self.free[n] = prior > 0.0, order  # ML: reference coding θ_0 = 0

    def eta(self, z: FloatArray) -> FloatArray:
        eta: FloatArray = z[self.gf] - z[self.gs] + z[self.n]
        return eta

    def objective(self, z: FloatArray) -> float:
        eta = self.eta(z)
        ll = _dot(self.wins, _log_sigmoid(eta)) + _dot(self.count - self.wins, _log_sigmoid(-eta))
        return ll - 0.5 * self.prior * _dot(z, z)

    def _scatter(self, per_group: FloatArray, v: FloatArray) -> FloatArray:
        """Σ_k per_group[k]·∂η_k/∂z + prior·v, with fixed coordinates zeroed."""
        out = _sum_by(self.gf, per_group, self.n + 1) - _sum_by(self.gs, per_group, self.n + 1)
        out[self.n] = per_group.sum()
        out += self.prior * v
        out[~self.free] = 0.0
        return out

    def weights(self, z: FloatArray) -> FloatArray:
        """Information weights count·p·(1 − p) per group."""
        p: FloatArray = expit(self.eta(z))
        return self.count * p * (1.0 - p)

    def newton_step(self, z: FloatArray, tol: float) -> FloatArray:
        """Solve I(z)·step = ∇objective(z) on the free coordinates."""
        grad = self._scatter(self.wins - self.count * expit(self.eta(z)), -z)
        w = self.weights(z)
        if self.free.sum() > _DENSE_LIMIT:
            diag = _sum_by(self.gf, w, self.n + 1) + _sum_by(self.gs, w, self.n + 1) + self.prior
            diag[self.n] = w.sum()
            diag[~self.free] = 1.0
            solved = _pcg(lambda v: self._scatter(w * self.eta(v), v), grad, diag, tol)
            if solved is not None:
                return solved
        step = np.zeros(self.n + 1)
        info = self.information(w)[self.free][:, self.free].toarray()
        step[self.free] = cho_solve(cho_factor(info), grad[self.free])
        return step

    def information(self, w: FloatArray) -> csr_array:
        """Sparse information matrix −∇²objective over all n + 1 coordinates (fixed ones too)."""
        n, size, gf, gs = self.n, self.n + 1, self.gf, self.gs
        diagonal = _sum_by(gf, w, size) + _sum_by(gs, w, size) + self.prior
        diagonal[n] = w.sum() + self.prior
        order = _sum_by(gf, w, n) - _sum_by(gs, w, n)  # −∂²/∂θ_i∂δ
        items, last = np.arange(n), np.full(n, n)
        rows = np.concatenate([gf, gs, np.arange(size), items, last])
        cols = np.concatenate([gs, gf, np.arange(size), last, items])
        vals = np.concatenate([-w, -w, diagonal, order, order])
        return csr_array(coo_array((vals, (rows, cols)), shape=(size, size)))


def _pcg(
    matvec: Callable[[FloatArray], FloatArray], b: FloatArray, diag: FloatArray, tol: float
) -> FloatArray | None:
    """Jacobi-preconditioned conjugate gradients for SPD systems; None if not converged."""
    x = np.zeros_like(b)
    r = b.copy()
    target = tol * np.sqrt(_dot(b, b))
    if target == 0.0:
        return x
    z = r / diag
    d = z.copy()
    rz = _dot(r, z)
    for _ in range(max(200, 2 * int(np.sqrt(b.size)) + 100)):
        q = matvec(d)
        alpha = rz / _dot(d, q)
        x += alpha * d
        r -= alpha * q
        if np.sqrt(_dot(r, r)) <= target:
            return x
        z = r / diag
        rz_next = _dot(r, z)
        d = z + (rz_next / rz) * d
        rz = rz_next
    return None


def fit_bradley_terry(
    n_items: int,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    first_won: npt.ArrayLike,
    *,
    prior: float = 0.0,
    order_effect: bool = False,
    max_iter: int = 100,
    tol: float = 1e-9,
    standard_errors: Literal["auto", "exact", "estimated", "none"] = "auto",
) -> BTFit:
    """Fit the Bradley-Terry model (module docstring) by Newton's method.

    Parameters: ``first[k]``/``second[k]`` are the indexes of the items shown as Essay A / B in
    comparison k and ``first_won[k]`` is True when Essay A won. ``order_effect`` adds δ.
    Estimation: ``prior == 0`` is maximum likelihood with reference coding (θ[0] = 0), reported
    centred to sum zero. ``prior > 0`` is the MAP estimate under independent N(0, 1/prior)
    priors on each θ and on δ (ridge penalty prior/2·(Σθ² + δ²), so a MAP estimate always
    exists); its θ sums to zero exactly.
    Newton steps use a dense Cholesky solve for small problems and Jacobi-preconditioned
    conjugate gradients on the sparse information matrix for large ones (to a relative
    residual of min(1e-2, last step) — inexact Newton — but at least 1e-10), with step
    halving; iteration stops when the largest parameter change is below ``tol``.
    Standard errors: Σ = inverse information of the free parameters (reference-coded for ML,
    with a zero row/column for item 0; full for MAP); ``covariance`` = P·Σ_θθ·Pᵀ with
    P = I − 11ᵀ/n; ``order_effect_se`` = sqrt(Σ_δδ) (the same under any coding).
    ``standard_errors``: "exact" inverts the information matrix densely (O(n²) memory),
    "estimated" estimates diag(covariance) without it (``se_error`` says how well), "auto"
    is exact up to ``uncertainty.EXACT_LIMIT`` items, "none" skips them (``se`` NaN).
    Raises ``DisconnectedGraphError`` (ML on a disconnected comparison graph) and
    ``UnboundedEstimateError`` (ML when some split of the items has wins only one way, when
    Essay A always or never won with ``order_effect``, or when the fit still diverges).
    """
    f, s, y = _comparisons(n_items, first, second, first_won)
    if not (np.isfinite(prior) and prior >= 0.0):
        raise ValueError(f"prior must be a finite precision >= 0, got {prior}")
    if max_iter < 1 or not tol > 0.0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got {max_iter}, {tol}")
    if f.size == 0 and prior == 0.0:
        raise DisconnectedGraphError([[i] for i in range(n_items)])
    if prior == 0.0:
        _check_ml_exists(n_items, f, s, y, order_effect)
    problem = _Problem(n_items, f, s, y, order_effect, float(prior))
    z, n_iter, converged = _newton(problem, max_iter, tol)
    if prior == 0.0 and (not converged or np.max(np.abs(z)) > _ML_BOUND):
        far = np.flatnonzero(np.abs(z[:n_items] - z[:n_items].mean()) > _ML_BOUND / 2).tolist()
        raise UnboundedEstimateError("the Newton iterations diverge", far)
    theta = z[:n_items] - z[:n_items].mean()
    se, covariance, se_error, order_var = np.full(n_items, np.nan), None, 0.0, np.nan
    if standard_errors != "none":
        keep = problem.free.copy()
        keep[:n_items] = True  # J over all abilities (singular along 1 for ML) and δ if fitted
        variances = sum_to_zero_variances(
            problem.information(problem.weights(z))[keep][:, keep],
            n_items,
            exact={"auto": None, "exact": True, "estimated": False}[standard_errors],
        )
        se, covariance, se_error = np.sqrt(variances.theta), variances.covariance, variances.error
        order_var = float(variances.other[0]) if order_effect else np.nan
    for array in (theta, se) if covariance is None else (theta, se, covariance):
        array.setflags(write=False)
    log_lik = problem.objective(z) + 0.5 * prior * float(z @ z)
    return BTFit(
        theta=theta,
        se=se,
        covariance=covariance,
        se_error=se_error,
        order_effect=float(z[n_items]) if order_effect else None,
        order_effect_se=float(np.sqrt(order_var)) if order_effect else None,
        log_likelihood=log_lik,
        deviance=2.0 * (problem.saturated - log_lik),
        null_deviance=2.0 * (problem.saturated + f.size * np.log(2.0)),
        df_residual=int(problem.count.size - (n_items - 1) - int(order_effect)),
        n_iter=n_iter,
        converged=converged,
        prior=float(prior),
        n_comparisons=int(f.size),
    )


def _newton(problem: _Problem, max_iter: int, tol: float) -> tuple[FloatArray, int, bool]:
    """Damped Newton ascent of the objective from z = 0: (estimate, iterations, converged)."""
    z = np.zeros(problem.n + 1)
    objective = problem.objective(z)
    forcing = 1e-2  # CG tolerance: loose far from the optimum, tight near it (inexact Newton)
    for n_iter in range(1, max_iter + 1):
        step = problem.newton_step(z, forcing)
        converged = bool(np.max(np.abs(step)) < tol)
        for _ in range(60):  # step halving; the objective is concave, so this terminates
            value = problem.objective(z + step)
            if value >= objective - 1e-12 * (1.0 + abs(objective)):
                break
            step /= 2.0
        z, objective = z + step, value
        forcing = max(min(1e-10, tol), min(1e-2, float(np.max(np.abs(step)))))
        if converged:
            return z, n_iter, True
    return z, max_iter, False


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
