"""Variances of sum-to-zero abilities from an information matrix: exact when small, estimated
when large, never a dense n×n matrix above ``EXACT_LIMIT`` abilities.

A fit hands over J, the information matrix (negative Hessian of the log-likelihood or
log-posterior) of its parameters at the estimate, as a scipy sparse matrix: the n abilities
θ_0..θ_{n−1} first, then any other fitted parameters (the order effect).
The invariant every caller keeps: adding one constant to every θ leaves the model unchanged,
so J·e = λ·e for e = (1, …, 1, 0, …, 0) — λ = 0 for maximum likelihood, λ = the ridge
precision for a MAP fit with an isotropic ridge on θ. Abilities are reported sum-to-zero,
and their covariance is

    C = P·(K⁻¹)_θθ·P = (K⁻¹)_θθ − 11ᵀ/(μn),   K = J + (μ − λ)·eeᵀ/n,   P = I − 11ᵀ/n,

for any μ > 0: K keeps J's other eigenpairs and has e as an eigenvector with eigenvalue μ,
so K is positive definite even when J is singular. For ML this is the reference-coded
inverse information projected to sum zero; for MAP it is P·J⁻¹·P. The other parameters'
variances are diag(K⁻¹) beyond the abilities, the same under any coding of θ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import lapack

FloatArray = npt.NDArray[np.float64]

EXACT_LIMIT = 1000  # abilities up to which the covariance is computed exactly (dense inverse)
TARGET = 0.005  # estimated RMS relative error of the standard errors at which probing stops
MAX_PROBES = 256  # probes at most, whatever the estimated error
_BLOCK = 16  # probes solved together (bounds memory at ~6 arrays of m × _BLOCK floats)
_SPARSE_DEGREE = 16.0  # mean degree up to which the control variate goes to fourth order
_PROBE_RTOL = 1e-4  # CG residual for probes: its bias (~1e-4 relative) is far below TARGET
_RTOL = 1e-6  # CG residual for the other parameters' variances
_CHUNK_ROWS_WORK = 2**16  # least multiply-adds per chunk of S² rows (at most max(this, nnz(S)))


class ConvergenceError(ArithmeticError):
    """Conjugate gradients did not reach the tolerance: the information matrix is (near)
    singular beyond the shift of all abilities, e.g. a disconnected comparison graph in an
    ML fit."""


@dataclass(frozen=True, eq=False)
class Variances:
    """Variances of sum-to-zero abilities and of the other fitted parameters.

    theta: diag(C), shape (n_items,). other: variances of the parameters after the
    abilities, shape (m − n_items,), always to solver precision. covariance: C itself
    (n_items × n_items) on the exact path, else ``None``. error: 0 on the exact path, else
    the estimated root-mean-square relative error of sqrt(theta). probes: random probes
    used (0 on the exact path).
    """

    theta: FloatArray
    other: FloatArray
    covariance: FloatArray | None
    error: float
    probes: int
    log_det: float | None = None
    """log det J on the exact path when J is positive definite (λ > 0, a MAP fit), for the
    Laplace evidence; else ``None``."""

    @property
    def exact(self) -> bool:
        return self.covariance is not None


def sum_to_zero_variances(
    information: sp.sparray | sp.spmatrix | FloatArray,
    n_items: int,
    *,
    exact: bool | None = None,
    target: float = TARGET,
    max_probes: int = MAX_PROBES,
    rng: np.random.Generator | int | None = 0,
) -> Variances:
    """Variances of sum-to-zero abilities (module docstring), exact or estimated.

    ``information``: J, symmetric (m × m, sparse or dense), the n_items abilities first.
    ``exact``: ``None`` inverts K densely up to ``EXACT_LIMIT`` abilities and estimates above
    (:func:`_estimated_variances` with ``target``, ``max_probes`` and ``rng``; the default
    seed makes repeated calls agree); ``True``/``False`` forces a path. Raises
    ``ValueError`` when J breaks the shift invariant, ``np.linalg.LinAlgError`` or
    ``ConvergenceError`` when K is not positive definite (e.g. an ML fit on a disconnected
    comparison graph).
    """
    j, lam, mu = _checked(information, n_items)
    if exact if exact is not None else n_items <= EXACT_LIMIT:
        covariance, other, log_det_k = _exact_covariance(j, n_items, lam, mu)
        # K and J differ only in the eigenvalue along e: μ instead of λ
        log_det = log_det_k - np.log(mu) + np.log(lam) if lam > 0.0 else None
        return Variances(np.diag(covariance).copy(), other, covariance, 0.0, 0, log_det)
    theta, other, error, probes = _estimated_variances(
        sp.csr_array(j), n_items, lam, mu, target=target, max_probes=max_probes, rng=rng
    )
    return Variances(theta, other, None, error, probes)


def _checked(
    information: sp.sparray | sp.spmatrix | FloatArray, n_items: int
) -> tuple[sp.csr_array | FloatArray, float, float]:
    """J (CSR, or dense as given), its eigenvalue λ along e, and μ = the mean ability diagonal
    (a scale at which K is well conditioned)."""
    j: sp.csr_array | FloatArray
    if isinstance(information, np.ndarray):
        j = np.asarray(information, dtype=np.float64)
    else:
        j = sp.csr_array(information, dtype=np.float64)
    m = j.shape[0]
    if j.shape != (m, m) or not 2 <= n_items <= m:
        raise ValueError(f"information must be square with at least n_items={n_items} rows")
    e = np.zeros(m)
    e[:n_items] = 1.0
    je = j @ e
    lam = float(je[:n_items].mean())
    scale = float(abs(j).sum(axis=1).max())
    if np.max(np.abs(je - lam * e)) > 1e-8 * scale:
        raise ValueError(
            "information matrix is not invariant to shifting all abilities by one constant "
            "(J·e ≠ λ·e): pass the information of all n abilities, not a reference-coded block"
        )
    diagonal = np.diagonal(j) if isinstance(j, np.ndarray) else j.diagonal()
    mu = float(diagonal[:n_items].mean())
    if not mu > 0.0:
        raise ValueError("information matrix has no positive ability diagonal")
    return j, lam, mu


def _exact_covariance(
    j: sp.csr_array | FloatArray, n_items: int, lam: float, mu: float
) -> tuple[FloatArray, FloatArray, float]:
    """(C, other variances, log det K) from a dense Cholesky inverse of K: O(m²) memory,
    O(m³) time."""
    n = n_items
    k = j.copy() if isinstance(j, np.ndarray) else j.toarray()
    k[:n, :n] += (mu - lam) / n
    inverse, log_det = _inverse_spd(k)
    covariance = inverse[:n, :n].copy()
    row_mean = covariance.mean(axis=1)  # P·A·P = A − r1ᵀ − 1rᵀ + mean(r), r = row means
    covariance -= row_mean[:, None]
    covariance -= row_mean[None, :] - row_mean.mean()
    return covariance, np.diag(inverse)[n:].copy(), log_det


def _inverse_spd(matrix: FloatArray) -> tuple[FloatArray, float]:
    """Inverse and log-determinant of a symmetric positive definite matrix via LAPACK
    potrf/potri."""
    factor, code = lapack.dpotrf(matrix.T, lower=False, overwrite_a=True)  # symmetric: .T is F
    log_det = 2.0 * float(np.sum(np.log(np.diag(factor)))) if code == 0 else float("nan")
    if code == 0:
        factor, code = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if code != 0:
        raise np.linalg.LinAlgError("information matrix is not positive definite")
    inverse: FloatArray = factor + factor.T  # potri fills the upper triangle, lower is zero
    inverse[np.diag_indices_from(inverse)] /= 2.0
    return inverse, log_det


def _estimated_variances(
    j: sp.csr_array,
    n_items: int,
    lam: float,
    mu: float,
    *,
    target: float = TARGET,
    max_probes: int = MAX_PROBES,
    rng: np.random.Generator | int | None = 0,
) -> tuple[FloatArray, FloatArray, float, int]:
    """(diag(C) estimated, other variances exact, estimated error, probes used).

    Memory O(nnz(J) + m·_BLOCK), never m². With D = diag(K), S = D^(−1/2)·N·D^(−1/2) for N
    the negated off-diagonal part of J's ability block, and T = D^(−1/2)·(I + S + … + S^q)·
    D^(−1/2) (a Neumann approximation of K⁻¹ of order q),

        diag(C) = diag(P·T·P) + E[w ⊙ (K⁻¹·w − P·T·w)],   w = P·v,

    for random signs v (Hutchinson's estimator on the remainder; P removes the mean of the
    ability block, along which T's series converges slowly). diag(P·T·P) is computed exactly
    from the Neumann terms, so chance only enters through the small remainder K⁻¹ − T.
    q = 4 when the comparison graph is sparse (degree-weighted mean degree at most
    ``_SPARSE_DEGREE``, where S² is cheap and the remainder of q = 2 large), else q = 2.
    Each probe costs one solve K·x = w (Jacobi-preconditioned conjugate gradients, ``_BLOCK``
    probes at a time, started from P·T·w). Blocks of probes are added until the estimated
    root-mean-square relative error of the standard errors (from the spread of the probes,
    averaged over all essays, so one block already estimates it well) is at most
    ``target``, or ``max_probes`` are used. An estimate is never below the bound
    (K⁻¹)_ii ≥ 1/K_ii (less 1/(μn), the mean along e). The other parameters' variances come
    from solving K·x = e_p to the solver tolerance.
    """
    if max_probes < _BLOCK or not target > 0.0:
        raise ValueError(f"need max_probes >= {_BLOCK} and target > 0")
    n, m = n_items, j.shape[0]
    shift = (mu - lam) / n
    diag = j.diagonal().copy()
    diag[:n] += shift
    if np.any(diag <= 0.0):
        raise np.linalg.LinAlgError("information matrix has a non-positive diagonal")
    root = 1.0 / np.sqrt(diag[:n])
    block = j[:n, :n]
    scale = sp.diags_array(root)
    s = sp.csr_array(scale @ (sp.diags_array(block.diagonal()) - block) @ scale)
    degree = np.diff(s.indptr).astype(np.float64)
    order = 4 if degree @ degree <= _SPARSE_DEGREE * degree.sum() else 2

    def apply_k(x: FloatArray) -> FloatArray:
        out: FloatArray = j @ x
        out[:n] += shift * x[:n].sum(axis=0)
        return out

    def apply_t(w: FloatArray) -> FloatArray:
        """T·w on the ability block (w: n × k)."""
        term = root[:, None] * w
        total = term.copy()
        for _ in range(order):
            term = s @ term
            total += term
        result: FloatArray = root[:, None] * total
        return result

    t_one = apply_t(np.ones((n, 1)))[:, 0]  # diag(P·T·P) = diag(T) − 2·T1/n + 1ᵀT1/n²
    control = _neumann_diagonal(s, order) * root**2 - 2.0 * t_one / n + t_one.mean() / n
    gen = np.random.default_rng(rng)
    total, squares, used, error = np.zeros(n), np.zeros(n), 0, np.inf
    while used < max_probes and error > target:
        w = np.zeros((m, _BLOCK))
        w[:n] = gen.choice((-1.0, 1.0), size=(n, _BLOCK))
        w[:n] -= w[:n].mean(axis=0)
        start = np.zeros_like(w)
        start[:n] = apply_t(w[:n])
        start[:n] -= start[:n].mean(axis=0)
        x = _block_pcg(apply_k, w, diag, start, _PROBE_RTOL)
        samples = w[:n] * (x[:n] - start[:n])
        total += samples.sum(axis=1)
        squares += (samples**2).sum(axis=1)
        used += _BLOCK
        spread = np.maximum(squares / used - (total / used) ** 2, 0.0) / (used - 1)
        relative = spread / np.maximum(control + total / used, 1e-300) ** 2
        error = float(np.sqrt(np.mean(relative))) / 2.0  # δse/se = δvar/(2·var)
    other = np.empty(m - n)
    if m > n:
        units = np.zeros((m, m - n))
        units[n:] = np.eye(m - n)
        other = np.diag(_block_pcg(apply_k, units, diag, units / diag[:, None], _RTOL)[n:])
    theta = np.maximum(control + total / used, 1.0 / diag[:n] - 1.0 / (mu * n))
    return theta, other.copy(), error, used


def _neumann_diagonal(s: sp.csr_array, order: int) -> FloatArray:
    """diag(I + S + … + S^order) for a symmetric S with a zero diagonal (order 2 or 4).

    diag(S²)_i = Σ_j S_ij², diag(S³)_i = Σ_j (S²)_ij·S_ij, diag(S⁴)_i = Σ_j (S²)_ij²; S² is
    formed a chunk of rows at a time, each of about max(``_CHUNK_ROWS_WORK``, nnz(S))
    products, so memory stays O(nnz(S)) whatever the degrees.
    """
    out: FloatArray = 1.0 + np.asarray((s * s).sum(axis=1), dtype=np.float64)
    if order == 2:
        return out
    pattern = sp.csr_array((np.ones_like(s.data), s.indices, s.indptr), shape=s.shape)
    cumulative = np.cumsum(pattern @ np.diff(s.indptr).astype(np.float64))  # S² products
    chunk, lo = max(_CHUNK_ROWS_WORK, s.nnz), 0  # a chunk of S² is no larger than S itself
    while lo < s.shape[0]:
        done = cumulative[lo - 1] if lo else 0.0
        hi = max(lo + 1, int(np.searchsorted(cumulative, done + chunk, side="right")))
        rows = s[lo:hi]
        two = rows @ s
        row_of = np.repeat(np.arange(hi - lo), np.diff(two.indptr))
        out[lo:hi] += np.asarray(two.multiply(rows).sum(axis=1)).ravel()
        out[lo:hi] += np.bincount(row_of, two.data**2, hi - lo)
        lo = hi
    return out


def _block_pcg(
    apply: Callable[[FloatArray], FloatArray],
    b: FloatArray,
    diag: FloatArray,
    x0: FloatArray,
    rtol: float,
) -> FloatArray:
    """Solve K·X = B column by column (one Jacobi-preconditioned CG per column, run in
    lockstep so each iteration is one sparse product with a block)."""
    x = x0.copy()
    r = b - apply(x)
    target = rtol * np.linalg.norm(b, axis=0)
    inv = (1.0 / diag)[:, None]
    z = inv * r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    for _ in range(max(500, 10 * int(np.sqrt(b.shape[0])))):
        active = np.linalg.norm(r, axis=0) > target
        if not active.any():
            return x
        q = apply(p)
        pq = np.einsum("ij,ij->j", p, q)
        alpha = np.where(active, rz / np.where(active, pq, 1.0), 0.0)
        x += alpha * p
        r -= alpha * q
        z = inv * r
        rz_next = np.einsum("ij,ij->j", r, z)
        beta = np.where(active, rz_next / np.where(active, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_next
    raise ConvergenceError("conjugate gradients did not converge on the information matrix")
