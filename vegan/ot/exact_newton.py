"""Damped Newton on exact cells, for any dimension whose Laguerre cells can be measured exactly.

The solver of Kitagawa, Mérigot and Thibert (2019), the one ``pysdot`` implements: from the Voronoi
start (``h_i = -|y_i|^2 / 2``, every cell holds its own site), Newton steps on the exact mass
Laplacian, halved until every mass stays above half the smallest of the start's masses and of the
targets, which makes it converge on any configuration, gapped clusters and tiny cells included.
:mod:`vegan.ot.exact2d` (polygons) and :mod:`vegan.ot.exact3d` (polytopes) provide the cell
measure ``cells(y, h) -> (masses, W)``: masses of the uniform source on the cube, and ``W_ij`` the
derivative of mass ``i`` in ``h_j`` (shared face over ``|y_i - y_j|``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

CellMeasure = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, sp.csr_matrix]]
"""``cells(y, h) -> (masses, W)``: exact cell masses and the off-diagonal mass derivatives."""


def face_weights(y: np.ndarray, rows, cols, faces, cube_measure: float) -> sp.csr_matrix:
    """``W_ij`` = shared face (length in 2-D, area in 3-D) over ``|y_i - y_j|`` and the cube's measure, from
    each cell's own list of faces ``(rows, cols, faces)``; the two cells of a face measure it apart, so
    their rounding is averaged."""
    n = len(y)
    F = sp.coo_matrix((faces, (rows, cols)), shape=(n, n)).tocsr()
    F = ((F + F.T) / 2).tocoo()
    dist = np.linalg.norm(y[F.row] - y[F.col], axis=1)
    return sp.csr_matrix((F.data / dist / cube_measure, (F.row, F.col)), shape=(n, n))


def laplacian_step(W: sp.csr_matrix, residual: np.ndarray) -> np.ndarray:
    """Solve ``L dh = residual`` for the mass Laplacian ``L = diag(W 1) - W`` with ``dh_0 = 0`` (h is free up to
    a constant)."""
    L = (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W).tocsc()
    dh = np.zeros(len(residual))
    dh[1:] = spsolve(L[1:, 1:], residual[1:])
    return dh


def exact_potential(
    measure: CellMeasure,
    y: np.ndarray,
    nu: np.ndarray,
    tol: float,
    max_iter: int = 100,
    on_iteration: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, list[dict], str | None]:
    """Damped Newton on the cells of ``measure``: ``(h, history, reason)``; ``reason`` is None when every
    cell is within ``tol`` (see :func:`damped_newton`). Equal codes cannot split their mass: the first
    of each group takes all of it (as in 1-D), the others sit below it, and the reason says so."""
    y = np.asarray(y, dtype=np.float64)
    nu = np.asarray(nu, dtype=np.float64)
    _, first, inverse = np.unique(y, axis=0, return_index=True, return_inverse=True)
    if len(first) < len(y):
        inverse = inverse.reshape(-1)
        h_first, history, _ = exact_potential(measure, y[first], np.bincount(inverse, weights=nu), tol, max_iter)
        h = h_first[inverse] - (np.arange(len(y)) != first[inverse])
        dup = len(y) - len(first)
        return h, history, f"{dup} code(s) coincide with another after scaling to float32; their cells merge"
    return damped_newton(measure, y, nu, tol, max_iter, on_iteration)


def damped_newton(
    measure: CellMeasure,
    y: np.ndarray,
    nu: np.ndarray,
    tol: float,
    max_iter: int,
    on_iteration: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, list[dict], str | None]:
    """KMT damped Newton on exact cells ``measure(y, h) -> (masses, W)``: ``(h, history, reason)``.

    Iterate until the max
    relative cell error is at most ``tol / 4`` (the margin absorbs the float32 rounding of the kernel);
    a step is halved until every mass stays above ``eps`` and the residual shrinks by ``1 - tau / 2``,
    and the next step starts at twice the last accepted one.
    """
    h = -0.5 * (y**2).sum(axis=1)  # Voronoi start: each cell holds its own site
    h -= h.mean()
    m, W = measure(y, h)
    eps = 0.5 * min(m.min(), nu.min())
    history: list[dict] = []
    tau = 1.0
    if eps <= 0:
        return h, history, "a cell of the Voronoi start is empty (coinciding codes)"
    for it in range(1, max_iter + 1):
        if (np.abs(m - nu) / nu).max() <= tol / 4:
            return h, history, None
        dh = laplacian_step(W, nu - m)
        base = np.linalg.norm(m - nu)
        tau = min(1.0, 2 * tau)
        while True:
            h_try = h + tau * dh
            m_try, W_try = measure(y, h_try)
            if m_try.min() >= eps and np.linalg.norm(m_try - nu) <= (1 - tau / 2) * base:
                break
            tau /= 2
            if tau < 1e-10:
                return h, history, f"damping fell below 1e-10 at iteration {it} (rounding limits the cells)"
        h, m, W = h_try - h_try.mean(), m_try, W_try
        err = np.abs(m - nu) / nu
        rec = {
            "iteration": it,
            "exact": True,
            "damping": tau,
            "max_rel_error": float(err.max()),
            "l1_rel_error": float(np.abs(m - nu).sum()),
        }
        history.append(rec)
        if on_iteration is not None:
            on_iteration(rec)
    if (np.abs(m - nu) / nu).max() <= tol:
        return h, history, None
    return h, history, f"iteration budget (max_iter {max_iter}) spent"


def marginal_error_exact(measure: CellMeasure, y: np.ndarray, h: np.ndarray, nu: np.ndarray) -> dict[str, float]:
    """``max`` relative and ``l1`` cell error of ``h`` from exact cell masses (``n_samples`` 0: no sampling)."""
    masses, _ = measure(y, h)
    err = np.abs(masses - nu)
    return {"max": float((err / nu).max()), "l1": float(err.sum()), "n_samples": 0}
