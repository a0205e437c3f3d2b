"""The likelihood of the judge model and its solver: the log-posterior and Newton's method.

The model is stated in :mod:`cjllm.cj.scoring`. Comparisons are grouped by ordered pair
(first, second); the parameter vector is z = (θ_0..θ_{n-1}, δ); no lapse rate (ε = 0: the
lapse rate is sampled by :mod:`cjllm.cj.posterior`, not fitted here).
:class:`LogPosterior` holds the data and priors and gives the value, gradient and information
of the log-posterior; :func:`newton` climbs it. Standard errors are computed from its
information matrix by :mod:`cjllm.cj.uncertainty` (exact when small, estimated when large).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy.linalg import lapack
from scipy.sparse import coo_array, csr_array
from scipy.special import expit, xlogy

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

DENSE_LIMIT = 400  # parameter count up to which Newton steps use a dense Cholesky solve


def sum_by(index: IntArray, values: FloatArray, size: int) -> FloatArray:
    """Sums of ``values`` grouped by ``index`` (0..size-1)."""
    return np.bincount(index, values, size).astype(np.float64, copy=False)


def dot(a: FloatArray, b: FloatArray) -> float:
    """a·b without BLAS: a threaded ddot stalls for milliseconds on a busy machine, and these
    reductions run in every conjugate-gradient and line-search step."""
    return float(np.einsum("i,i->", a, b))


def _log_sigmoid(x: FloatArray) -> FloatArray:
    return -np.logaddexp(0.0, -x)


class LogPosterior:
    """Grouped comparisons and the log-posterior of z = (θ_0..θ_{n-1}, δ).

    δ is always the last coordinate; it and (for ML) θ_0 stay fixed at 0 unless ``free``.
    Priors: N(0, 1/prior) on each θ, N(0, 1/order_prior) on δ. The information is the
    negative Hessian, equal to the expected (Fisher) one (the canonical logit link).
    """

    def __init__(
        self,
        n: int,
        f: IntArray,
        s: IntArray,
        y: BoolArray,
        *,
        order: bool,
        prior: float,
        order_prior: float,
    ):
        uniq, inverse = np.unique(f * n + s, return_inverse=True)
        self.n, self.prior, self.gf, self.gs = n, prior, uniq // n, uniq % n
        self.count = sum_by(inverse, np.ones(f.size), uniq.size)
        self.wins = sum_by(inverse, y.astype(np.float64), uniq.size)
        losses = self.count - self.wins
        self.saturated = float(np.sum(xlogy(self.wins, self.wins / self.count)))
        self.saturated += float(np.sum(xlogy(losses, losses / self.count)))
        self.free = np.ones(n + 1, dtype=bool)
        self.free[0], self.free[n] = prior > 0.0, order  # ML: reference coding θ_0 = 0
        self.precision = np.full(n + 1, prior)
        self.precision[n] = order_prior
        self._cells: IntArray | None = None  # flat cells of the dense information (lazily)

    def eta(self, z: FloatArray) -> FloatArray:
        eta: FloatArray = z[self.gf] - z[self.gs] + z[self.n]
        return eta

    def log_likelihood(self, z: FloatArray) -> float:
        eta = self.eta(z)
        log_p, log_q = _log_sigmoid(eta), _log_sigmoid(-eta)
        return dot(self.wins, log_p) + dot(self.count - self.wins, log_q)

    def objective(self, z: FloatArray) -> float:
        """Log-likelihood plus the Gaussian log prior (without its constants)."""
        return self.log_likelihood(z) - 0.5 * dot(self.precision, z * z)

    def _scatter(self, per_group: FloatArray, v: FloatArray) -> FloatArray:
        """Σ_k per_group[k]·∂η_k/∂z + precision·v, with fixed coordinates zeroed."""
        out = sum_by(self.gf, per_group, self.n + 1) - sum_by(self.gs, per_group, self.n + 1)
        out[self.n] = per_group.sum()
        out += self.precision * v
        out[~self.free] = 0.0
        return out

    def _probability(self, z: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Per group: P(Essay A wins) and ∂P/∂η."""
        p: FloatArray = expit(self.eta(z))
        return p, p * (1.0 - p)

    def gradient(self, z: FloatArray) -> FloatArray:
        p, dp = self._probability(z)
        return self._scatter((self.wins - self.count * p) / (p * (1.0 - p)) * dp, -z)

    def weights(self, z: FloatArray) -> FloatArray:
        """Per-group information weights w: information = Σ_k w_k·x_k x_kᵀ + priors, with
        x_k = ∂η_k/∂z: count·(∂P/∂η)²/(P(1 − P)) = count·p·(1 − p), never negative."""
        p, dp = self._probability(z)
        w: FloatArray = self.count * dp**2 / (p * (1.0 - p))
        return w

    def _matvec(self, w: FloatArray) -> Callable[[FloatArray], FloatArray]:
        """v ↦ information·v without forming the matrix."""
        return lambda v: self._scatter(w * self.eta(v), v)

    def information(self, w: FloatArray) -> csr_array:
        """Sparse information matrix −∇²objective over all n + 1 coordinates (fixed ones too),
        from :meth:`weights`."""
        n, size, gf, gs = self.n, self.n + 1, self.gf, self.gs
        diagonal = sum_by(gf, w, size) + sum_by(gs, w, size) + self.precision
        diagonal[n] = w.sum() + self.precision[n]
        order = sum_by(gf, w, n) - sum_by(gs, w, n)  # −∂²/∂θ_i∂δ
        items, last = np.arange(n), np.full(n, n)
        rows = np.concatenate([gf, gs, np.arange(size), items, last])
        cols = np.concatenate([gs, gf, np.arange(size), last, items])
        vals = np.concatenate([-w, -w, diagonal, order, order])
        return csr_array(coo_array((vals, (rows, cols)), shape=(size, size)))

    def dense_information(self, w: FloatArray, keep: BoolArray | None = None) -> FloatArray:
        """:meth:`information` as a dense array, restricted to the coordinates ``keep``
        (all when None): built by one scatter-add, no sparse matrix in between."""
        n, size = self.n, self.n + 1
        if self._cells is None:  # x_k = e_f − e_s + e_δ: nine cells of x_k x_kᵀ per group
            gf, gs, d = self.gf, self.gs, n
            rows = (gf, gs, gf, gs, gf, d, gs, d, d)
            cols = (gf, gs, gs, gf, d, gf, d, gs, d)
            self._cells = np.concatenate(
                [np.broadcast_to(r * size + c, gf.shape) for r, c in zip(rows, cols, strict=True)]
            )
        signed = np.concatenate([w, w, -w, -w, w, w, -w, -w, w])
        dense = sum_by(self._cells, signed, size * size).reshape(size, size)
        dense[np.diag_indices(size)] += self.precision
        if keep is None or keep.all():
            return dense
        kept: FloatArray = dense[np.ix_(keep, keep)]
        return kept

    def newton_step(self, z: FloatArray, tol: float) -> FloatArray:
        """Solve I(z)·step = ∇objective(z) on the free coordinates (conjugate gradients above
        :data:`DENSE_LIMIT` free parameters, a dense Cholesky solve below or where they fail)."""
        grad = self.gradient(z)
        w = self.weights(z)
        if self.free.sum() > DENSE_LIMIT:
            diag = sum_by(self.gf, w, self.n + 1) + sum_by(self.gs, w, self.n + 1)
            diag[self.n] = w.sum()
            diag += self.precision
            diag[~self.free] = 1.0
            solved = _pcg(self._matvec(w), grad, diag, tol)
            if solved is not None and dot(grad, solved) >= 0.0:  # an ascent direction
                return solved
        info = self.dense_information(w, self.free)
        # positive semi-definite in theory: a jitter covers rounding
        info[np.diag_indices_from(info)] += 1e-10 * (1.0 + float(np.max(np.diag(info))))
        factor, code = lapack.dpotrf(info.T, lower=True, overwrite_a=True, clean=False)
        if code != 0:
            raise np.linalg.LinAlgError("information matrix is not positive definite")
        step = np.zeros(self.n + 1)
        step[self.free], code = lapack.dpotrs(factor, grad[self.free], lower=True)
        return step


def _pcg(
    matvec: Callable[[FloatArray], FloatArray], b: FloatArray, diag: FloatArray, tol: float
) -> FloatArray | None:
    """Jacobi-preconditioned conjugate gradients for SPD systems; None if not converged."""
    x = np.zeros_like(b)
    r = b.copy()
    target = tol * np.sqrt(dot(b, b))
    if target == 0.0:
        return x
    z = r / diag
    d = z.copy()
    rz = dot(r, z)
    for _ in range(max(200, 2 * int(np.sqrt(b.size)) + 100)):
        q = matvec(d)
        alpha = rz / dot(d, q)
        x += alpha * d
        r -= alpha * q
        if np.sqrt(dot(r, r)) <= target:
            return x
        z = r / diag
        rz_next = dot(r, z)
        d = z + (rz_next / rz) * d
        rz = rz_next
    return None


def newton(
    problem: LogPosterior, z: FloatArray, max_iter: int, tol: float
) -> tuple[FloatArray, int, bool]:
    """Damped Newton ascent of the objective from z: (estimate, iterations, converged)."""
    objective = problem.objective(z)
    forcing = 1e-2  # CG tolerance: loose far from the optimum, tight near it (inexact Newton)
    for n_iter in range(1, max_iter + 1):
        step = problem.newton_step(z, forcing)
        converged = bool(np.max(np.abs(step)) < tol)
        for _ in range(60):  # step halving: an ascent direction, so this terminates
            value = problem.objective(z + step)
            if value >= objective - 1e-12 * (1.0 + abs(objective)):
                break
            step /= 2.0
        z, objective = z + step, value
        forcing = max(min(1e-10, tol), min(1e-2, float(np.max(np.abs(step)))))
        if converged:
            return z, n_iter, True
    return z, max_iter, False
