"""Exact semi-discrete OT in two dimensions: Laguerre cells clipped to the square, damped Newton.

In the plane the power cell of ``y_i`` under ``u_h(x) = max_i <x, y_i> + h_i`` is a convex
polygon: the square ``[-1, 1]^2`` cut by one half-plane per neighbour. Its area is the cell's
mass (uniform source), and the derivative of mass ``i`` in ``h_j`` is the length of the shared
face over ``|y_i - y_j|``, so the Newton matrix is a weighted graph Laplacian, exact, with no
sampling noise. This is the solver of Kitagawa, Mérigot and Thibert (2019), the one ``pysdot``
implements: damped Newton steps that keep every cell's mass above half the smallest of the
start's masses and of the targets, which makes it converge from the Voronoi start
(``h_i = -|y_i|^2 / 2``, where every cell holds its own site) on any configuration, gapped
clusters and tiny cells included. The sampled solver cannot see a cell that receives no sample
(issue 23: the grid2d preset's codes were not converged after 100 iterations).

Neighbours come from the lower convex hull of the lifted points ``(y_i, -h_i)`` (qhull): its
edges are the pairs whose cells touch, and a point off it has an empty cell. Clipping is
Sutherland-Hodgman, run for all cells at once on padded arrays (one pass per neighbour slot).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import ConvexHull, QhullError

from vegan.ot.exact_newton import face_weights

LO, HI = -1.0, 1.0
AREA = (HI - LO) ** 2
ALL_PAIRS_MAX = 3000  # degenerate lifted points (e.g. collinear codes): every pair is a candidate up to here


def hull_neighbours(y: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, on_hull)``: candidate neighbour pairs ``(m, 2)``, ``i < j``, and which cells can be nonempty.

    The pairs are the edges of the lower hull of ``(y_i, -h_i)`` (a superset of the touching cells
    is harmless: a half-plane that does not cut changes nothing). Lifted points that qhull cannot
    hull in 3-D (all codes on a line) fall back to every pair, which is exact but quadratic.
    """
    n = len(y)
    pts = np.column_stack([y, -h])
    try:
        hull = ConvexHull(pts)
    except QhullError:
        if n > ALL_PAIRS_MAX:
            hull = ConvexHull(pts, qhull_options="QJ")  # joggled: neighbours of a nearby configuration
        else:
            i, j = np.triu_indices(n, 1)
            return np.column_stack([i, j]), np.ones(n, dtype=bool)
    lower = hull.simplices[hull.equations[:, 2] < 1e-12]  # downward (and vertical) facets
    on_hull = np.zeros(n, dtype=bool)
    on_hull[lower.ravel()] = True
    edges = np.concatenate([lower[:, [0, 1]], lower[:, [1, 2]], lower[:, [0, 2]]])
    edges.sort(axis=1)
    return np.unique(edges, axis=0), on_hull


def _clip(poly: np.ndarray, label: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray, tag: np.ndarray):
    """One Sutherland-Hodgman pass for every polygon: keep ``a . x + b >= 0``.

    ``poly`` (n, V, 2) padded vertices, ``label[:, v]`` what the edge from vertex ``v`` lies on
    (-1: the square, else the neighbour), ``count`` valid vertices; ``tag`` labels the new edge.
    """
    n, V, _ = poly.shape
    idx = np.arange(V)
    valid = idx[None, :] < count[:, None]
    nxt = np.where(idx[None, :] + 1 < count[:, None], idx[None, :] + 1, 0)
    p, q = poly, np.take_along_axis(poly, nxt[..., None], axis=1)
    sp_ = np.einsum("nvk,nk->nv", p, a) + b[:, None]
    sq = np.einsum("nvk,nk->nv", q, a) + b[:, None]
    inside_p, inside_q = sp_ >= 0, sq >= 0
    t = np.divide(sp_, sp_ - sq, out=np.zeros_like(sp_), where=inside_p != inside_q)
    cross = p + t[..., None] * (q - p)
    keep_p = valid & inside_p
    keep_x = valid & (inside_p != inside_q)
    # Output order per vertex: the vertex itself (if inside), then the crossing on its edge.
    out = np.stack([p, cross], axis=2).reshape(n, 2 * V, 2)
    lab_x = np.where(inside_p, tag[:, None], label)  # exit: the edge runs along the cut; entry: the old edge
    out_lab = np.stack([label, lab_x], axis=2).reshape(n, 2 * V)
    keep = np.stack([keep_p, keep_x], axis=2).reshape(n, 2 * V)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :V]  # a convex cut adds one vertex at most
    new_count = keep.sum(axis=1)
    return (
        np.take_along_axis(out, order[..., None], axis=1),
        np.take_along_axis(out_lab, order, axis=1),
        new_count,
    )


def cells(y: np.ndarray, h: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, sp.csr_matrix]:
    """Exact masses (area / 4) of the power cells in ``[-1, 1]^2`` and the Newton weights ``|face| / |y_i - y_j|``.

    Returns ``(masses, W)`` with ``W`` symmetric (mean of the two cells' face lengths), float64.
    """
    y = np.asarray(y, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    n = len(y)
    pairs, on_hull = hull_neighbours(y, h)
    both = np.concatenate([pairs, pairs[:, ::-1]])  # directed: (cell, neighbour)
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    deg = np.bincount(both[:, 0], minlength=n)
    start = np.concatenate([[0], np.cumsum(deg)])
    masses = np.zeros(n)
    rows, cols, lens = [], [], []
    square = np.array([[LO, LO], [HI, LO], [HI, HI], [LO, HI]])
    # Cells in order of degree: a chunk pads every cell to its largest degree, and a few sliver
    # cells with a hundred neighbours would otherwise make a whole chunk clip a hundred times.
    by_degree = np.flatnonzero(on_hull)[np.argsort(deg[on_hull], kind="stable")]
    for lo in range(0, len(by_degree), chunk):
        ids = by_degree[lo : lo + chunk]
        k = int(deg[ids].max(initial=0))
        m = len(ids)
        V = 4 + k  # the square's corners plus one per cut
        poly = np.zeros((m, V, 2))
        poly[:, :4] = square
        label = np.full((m, V), -1, dtype=np.int64)
        count = np.full(m, 4)
        for s in range(k):
            has = s < deg[ids]
            j = np.where(has, both[np.minimum(start[ids] + s, len(both) - 1), 1], -1)
            # Half-plane of cell i against j: <x, y_i - y_j> + h_i - h_j >= 0 (a dummy that never cuts if none).
            a = np.where(has[:, None], y[ids] - y[j], 0.0)
            b = np.where(has, h[ids] - h[j], 1.0)
            poly, label, count = _clip(poly, label, count, a, b, j)
        idx = np.arange(V)
        valid = idx[None, :] < count[:, None]
        nxt = np.where(idx[None, :] + 1 < count[:, None], idx[None, :] + 1, 0)
        q = np.take_along_axis(poly, nxt[..., None], axis=1)
        cross = poly[..., 0] * q[..., 1] - poly[..., 1] * q[..., 0]
        masses[ids] = np.where(valid, cross, 0).sum(axis=1) / 2 / AREA
        edge = np.linalg.norm(q - poly, axis=2)
        face = valid & (label >= 0) & (edge > 0)
        r, c = np.nonzero(face)
        rows.append(ids[r])
        cols.append(label[r, c])
        lens.append(edge[r, c])
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    lens = np.concatenate(lens) if lens else np.zeros(0)
    return masses, face_weights(y, rows, cols, lens, AREA)
