"""Exact semi-discrete OT in three dimensions: Laguerre polytopes clipped to the cube, damped Newton.

The 3-D twin of :mod:`vegan.ot.exact2d`. The power cell of ``y_i`` under
``u_h(x) = max_i <x, y_i> + h_i`` is a convex polytope: the cube ``[-1, 1]^3`` cut by one
half-space per neighbour. Its volume / 8 is the cell's mass (uniform source), and the derivative
of mass ``i`` in ``h_j`` is the area of the shared face over ``|y_i - y_j|`` (over 8), so the
Newton matrix is again an exact weighted graph Laplacian. The solver is the same damped Newton of
Kitagawa, Mérigot and Thibert (2019): from the Voronoi start, steps are halved until every mass
stays above half the smallest of the start's masses and of the targets. It converges where the
sampled solver cannot see a cell that receives no sample (two gapped clusters with weights 1:6).

Neighbours are the edges of the lower hull of the lifted points ``(y_i, -h_i)`` in 4-D (qhull).
Each cell is measured face by face: every plane bounding it (6 of the cube, one per neighbour)
starts as a square in that plane covering the cube's section and is clipped by the cell's other
half-spaces (Sutherland-Hodgman, all faces of a chunk at once). The face areas give the Newton
weights and, by the divergence theorem, the volume ``sum_f area_f * dist(0, plane_f) / 3``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import ConvexHull, QhullError

from vegan.ot.exact_newton import face_weights

LO, HI = -1.0, 1.0
VOLUME = (HI - LO) ** 3
ALL_PAIRS_MAX = 400  # flat lifted points that are not a lower-dimensional code set: every pair up to here
FACE_CHUNK = 16384  # faces clipped at once (memory: FACE_CHUNK x vertices x 3 floats per array)
HALF_WIDTH = 1.75  # > sqrt(3): a square this wide around the origin's projection covers a plane's cube section
RANK_RTOL = 1e-9  # singular values below this (relative) mean the codes span a lower-dimensional subspace


def _all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, 1)
    return np.column_stack([i, j]), np.ones(n, dtype=bool)


def _lower_hull(pts: np.ndarray, options: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Edges and vertices of the lower hull of ``pts`` (facets facing down the last axis); QhullError when flat."""
    n, k = pts.shape
    hull = ConvexHull(pts, qhull_options=options)
    lower = hull.simplices[hull.equations[:, k - 1] < 1e-12]  # downward (and vertical) facets; rows: normal, offset
    on_hull = np.zeros(n, dtype=bool)
    on_hull[lower.ravel()] = True
    a, b = np.triu_indices(k, 1)  # every pair of a simplex's k vertices is an edge
    edges = np.sort(np.concatenate([lower[:, [i, j]] for i, j in zip(a, b, strict=True)]), axis=1)
    return np.unique(edges, axis=0), on_hull


def hull_neighbours(y: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, on_hull)``: candidate neighbour pairs ``(m, 2)``, ``i < j``, and which cells can be nonempty.

    The pairs are the edges of the lower hull of ``(y_i, -h_i)`` (a superset of the touching cells is
    harmless: a half-space that does not cut changes nothing). Works in any dimension ``d = y.shape[1]``,
    which is how flat inputs are handled: codes in a plane or on a line have cells that are cylinders over
    the power cells of their coordinates in that subspace, so their neighbours are those of the projection
    (exact). Lifted points flat for another reason (``h`` affine in ``y``) fall back to every pair (exact)
    up to ``ALL_PAIRS_MAX`` codes, and beyond that to a joggled hull (neighbours of a nearby configuration).
    """
    n, d = y.shape
    try:
        return _lower_hull(np.column_stack([y, -h]))
    except QhullError:
        pass
    centred = y - y.mean(axis=0)
    s, vt = np.linalg.svd(centred, full_matrices=False)[1:]
    rank = int((s > RANK_RTOL * s[0]).sum()) if n > 1 and s[0] > 0 else 0
    if 0 < rank < d:
        return hull_neighbours(centred @ vt[:rank].T, h)
    if n <= ALL_PAIRS_MAX:
        return _all_pairs(n)
    return _lower_hull(np.column_stack([y, -h]), "QJ")


def _clip(poly: np.ndarray, count: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Sutherland-Hodgman pass for every polygon: keep where the affine ``side`` (given at the vertices) is >= 0.

    ``poly`` (F, V, 3) padded vertex loops, ``count`` their valid vertices. The output is padded to one
    vertex more than the largest polygon (a convex cut adds one vertex at most), so arrays stay small.
    """
    F, V, _ = poly.shape
    rows, last = np.arange(F), np.maximum(count - 1, 0)
    q, sq = np.roll(poly, -1, axis=1), np.roll(side, -1, axis=1)  # the next vertex, closing the loop at count
    q[rows, last], sq[rows, last] = poly[:, 0], side[:, 0]
    valid = np.arange(V)[None, :] < count[:, None]
    keep_p = valid & (side >= 0)
    keep_x = valid & ((side >= 0) != (sq >= 0))
    t = np.divide(side, side - sq, out=np.zeros_like(side), where=keep_x)
    # Output order per vertex: the vertex itself (if inside), then the crossing on its edge.
    pos = (np.cumsum(np.stack([keep_p, keep_x], axis=2).reshape(F, 2 * V), axis=1) - 1).reshape(F, V, 2)
    new_count = pos[:, -1, 1] + 1
    out = np.zeros((F, min(2 * V, int(new_count.max(initial=0)) + 1), 3))
    f, v = np.nonzero(keep_p)
    out[f, pos[f, v, 0]] = poly[f, v]
    f, v = np.nonzero(keep_x)
    out[f, pos[f, v, 1]] = poly[f, v] + t[f, v, None] * (q[f, v] - poly[f, v])
    return out, new_count


def _planes(y: np.ndarray, h: np.ndarray, ids: np.ndarray, nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-spaces ``a . x + b >= 0`` of each cell in ``ids``: the cube's 6, then one per neighbour slot.

    ``nbr`` (m, K) neighbours padded with -1; a padded slot gets ``a = 0, b = 1`` (never cuts, no face).
    """
    m, K = nbr.shape
    eye = np.eye(3)
    a = np.zeros((m, 6 + K, 3))
    b = np.ones((m, 6 + K))
    a[:, :6] = np.concatenate([eye, -eye])  # x_k >= -1, then x_k <= 1
    has = nbr >= 0
    j = np.where(has, nbr, 0)
    # Cell i against j: <x, y_i - y_j> + h_i - h_j >= 0.
    a[:, 6:] = np.where(has[..., None], y[ids][:, None] - y[j], 0.0)
    b[:, 6:] = np.where(has, h[ids][:, None] - h[j], 1.0)
    return a, b


def _start_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A square in each plane ``a . x + b = 0`` (rows of ``a`` nonzero) that covers the plane's section of the cube."""
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    nrm = a / norm
    foot = -(b[:, None] / norm) * nrm  # the origin's projection: the section lies within sqrt(3) of it
    axis = np.eye(3)[np.argmin(np.abs(nrm), axis=1)]  # the axis least aligned with the normal
    u = np.cross(nrm, axis)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(nrm, u)
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * HALF_WIDTH
    return foot[:, None] + signs[None, :, :1] * u[:, None] + signs[None, :, 1:] * v[:, None]


def _face_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area of every face of a chunk of cells: ``(m, S)`` for their ``S`` planes (0 where a plane is no face)."""
    m, S, _ = a.shape
    cell, slot = np.divmod(np.arange(m * S), S)
    a_f, b_f = a.reshape(-1, 3), b.reshape(-1)
    alive = np.flatnonzero(np.linalg.norm(a_f, axis=1) > 0)
    cell, slot = cell[alive], slot[alive]
    poly = _start_squares(a_f[alive], b_f[alive])
    count = np.full(len(alive), 4)
    for t in range(S):
        side = np.einsum("fvk,fk->fv", poly, a[cell, t]) + b[cell, t][:, None]
        side[slot == t] = 1.0  # a face is not cut by its own plane
        cut = ((side < 0) & (np.arange(poly.shape[1])[None, :] < count[:, None])).any(axis=1)
        if not cut.any():
            continue
        # Only the faces this plane cuts are clipped: most of a cell's planes miss most of its faces.
        sub, count[cut] = _clip(poly[cut], count[cut], side[cut])
        if sub.shape[1] > poly.shape[1]:
            poly = np.pad(poly, ((0, 0), (0, sub.shape[1] - poly.shape[1]), (0, 0)))
        poly[cut, : sub.shape[1]] = sub
        live = count >= 3
        if live.sum() < 0.8 * len(live):  # drop dead faces once they are a fifth of the work
            poly, count, cell, slot, alive = poly[live], count[live], cell[live], slot[live], alive[live]
    rel = poly - poly[:, :1]  # about the first vertex: no cancellation on small faces far from the origin
    nxt = np.roll(rel, -1, axis=1)
    valid = np.arange(poly.shape[1])[None, :] + 1 < count[:, None]  # the closing edge ends at vertex 0: zero
    twice = np.where(valid[..., None], np.cross(rel, nxt), 0.0).sum(axis=1)
    areas = np.zeros(m * S)
    areas[alive] = np.linalg.norm(twice, axis=1) / 2
    return areas.reshape(m, S)


def _chunks(deg: np.ndarray, by_degree: np.ndarray, faces: int) -> list[np.ndarray]:
    """Consecutive runs of ``by_degree`` (ascending degree) of at most ``faces`` padded faces (one cell at least)."""
    out, lo = [], 0
    while lo < len(by_degree):
        m = max(1, faces // (int(deg[by_degree[lo]]) + 6))
        m = max(1, min(m, faces // (int(deg[by_degree[min(lo + m, len(by_degree)) - 1]]) + 6)))
        out.append(by_degree[lo : lo + m])
        lo += m
    return out


def cells(y: np.ndarray, h: np.ndarray, chunk: int = FACE_CHUNK) -> tuple[np.ndarray, sp.csr_matrix]:
    """Exact masses (volume / 8) of the power cells in ``[-1, 1]^3``, Newton weights ``|face| / |y_i - y_j| / 8``.

    Returns ``(masses, W)`` with ``W`` symmetric (mean of the two cells' face areas), float64.
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
    rows, cols, faces = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    # Cells in order of degree: a chunk pads every cell to its largest degree.
    by_degree = np.flatnonzero(on_hull)[np.argsort(deg[on_hull], kind="stable")]
    for ids in _chunks(deg, by_degree, chunk):
        K = int(deg[ids].max(initial=0))
        slots = np.arange(K)[None, :]
        nbr = np.where(slots < deg[ids][:, None], both[np.minimum(start[ids][:, None] + slots, len(both) - 1), 1], -1)
        a, b = _planes(y, h, ids, nbr)
        area = _face_areas(a, b)
        dist = np.divide(b, np.linalg.norm(a, axis=2), out=np.zeros_like(b), where=area > 0)
        masses[ids] = (area * dist).sum(axis=1) / 3 / VOLUME
        r, c = np.nonzero(area[:, 6:] > 0)
        rows.append(ids[r])
        cols.append(nbr[r, c])
        faces.append(area[:, 6:][r, c])
    return masses, face_weights(y, np.concatenate(rows), np.concatenate(cols), np.concatenate(faces), VOLUME)
