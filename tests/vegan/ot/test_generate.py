"""Singularity-aware generation (vegan.ot.generate) on 2-D targets, where the
right answer can be seen: no code in the gap between clusters, a convex cluster
filled rather than its training codes repeated."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vegan.ot import OTResult
from vegan.ot.generate import GenerationResult, estimate_centroids, generate


def _solve(y: np.ndarray, iters: int = 150, n_mc: int = 4000, lr: float = 0.03, seed: int = 0):
    """Small semi-discrete OT solve (Adam on h, fixed uniform samples on the cube).

    Self-contained so these tests check the sampler, not the solver; rough
    marginals are enough for the sampler's geometric guarantees.
    """
    center = (y.max(0) + y.min(0)) / 2
    scale = float(np.abs(y - center).max())
    ys = torch.from_numpy((y - center) / scale).float()
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n_mc, y.shape[1], generator=g) - 1
    h = torch.zeros(len(y), requires_grad=True)
    opt = torch.optim.Adam([h], lr=lr)
    for _ in range(iters):
        cell = (x @ ys.T + h.detach()).argmax(1)
        h.grad = torch.bincount(cell, minlength=len(y)).float() / n_mc - 1.0 / len(y)
        opt.step()
    return OTResult(
        h=h.detach().double().numpy(),
        center=center,
        scale=scale,
        source="cube",
        nu=np.full(len(y), 1 / len(y)),
        history=[],
        converged=False,
        iterations=iters,
        marginal_error={},
    )


def _disk(n: int, center, radius: float, rng) -> np.ndarray:
    r = radius * np.sqrt(rng.random(n))
    t = 2 * np.pi * rng.random(n)
    return np.stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)], 1)


@pytest.fixture(scope="module")
def clusters():
    """Two disks of radius 0.3 at (-2, 0) and (2, 0), plus one lone code at (0, 2)."""
    rng = np.random.default_rng(0)
    y = np.concatenate([_disk(100, (-2, 0), 0.3, rng), _disk(100, (2, 0), 0.3, rng), [[0.0, 2.0]]])
    return y, _solve(y)


@pytest.fixture(scope="module")
def disk():
    rng = np.random.default_rng(1)
    y = _disk(200, (0, 0), 1.0, rng)
    return y, _solve(y)


def _in_gap(codes: np.ndarray) -> np.ndarray:
    """Codes farther than the cluster radius from both cluster centres."""
    d = np.minimum(np.linalg.norm(codes - [-2, 0], axis=1), np.linalg.norm(codes - [2, 0], axis=1))
    return d > 0.3 + 1e-6


def test_never_lands_in_the_gap_between_clusters(clusters):
    y, ot = clusters
    out = generate(y, ot, n=2000, k=8, angle_threshold=20, seed=1, centroid_samples=50_000, progress=False)
    assert isinstance(out, GenerationResult)
    assert out.codes.shape == (2000, 2) and out.codes.dtype == np.float32
    assert out.cells.shape == (2000,) and out.cells.dtype == np.int64
    assert not _in_gap(out.codes).any()
    # Both clusters are generated, in proportion to their mass.
    left = (out.codes[:, 0] < 0).mean()
    assert 0.4 < left < 0.6
    # The lone code has no neighbour on its sheet of the potential: its cell is rejected.
    assert 200 not in out.cells
    assert 0.001 < out.rejection_rate < 0.03
    assert out.n_drawn == pytest.approx(2000 / (1 - out.rejection_rate))


def test_without_rejection_codes_fall_in_the_gap(clusters):
    """The same run with the angle test disabled does put codes in the gap, so the
    test above checks the rejection rule and not an accident of the data."""
    y, ot = clusters
    out = generate(y, ot, n=2000, k=8, angle_threshold=1e9, seed=1, centroid_samples=50_000, progress=False)
    assert out.rejection_rate == 0.0
    assert _in_gap(out.codes).sum() > 5


def test_fills_a_convex_cluster(disk):
    y, ot = disk
    out = generate(y, ot, n=2000, k=8, angle_threshold=30, seed=1, centroid_samples=50_000, progress=False)
    assert out.rejection_rate < 0.01
    assert np.linalg.norm(out.codes, axis=1).max() <= 1 + 1e-5  # inside the convex hull
    # New codes, not copies of the training codes.
    nn = np.linalg.norm(out.codes[:, None] - y[None], axis=2).min(1)
    assert np.median(nn) > 0.02
    # Coverage of a fine grid of the disk, against the plain OT map (k=1) which can
    # only repeat the 200 codes.
    plain = generate(y, ot, n=2000, k=1, seed=1, centroids=out.centroids, progress=False)
    assert plain.rejection_rate == 0.0
    assert np.linalg.norm(plain.codes[:, None] - y[None], axis=2).min(1).max() < 1e-5

    def coverage(codes):
        cells = {tuple(c) for c in np.floor(codes[np.linalg.norm(codes, axis=1) < 0.9] / 0.05).astype(int)}
        grid = np.stack(np.meshgrid(np.arange(-20, 20), np.arange(-20, 20)), -1).reshape(-1, 2)
        inside = grid[np.linalg.norm((grid + 0.5) * 0.05, axis=1) < 0.85]
        return np.mean([tuple(g) in cells for g in inside])

    assert coverage(out.codes) > 0.5
    assert coverage(out.codes) > 2 * coverage(plain.codes)


def test_chunked_equals_unchunked(clusters):
    y, ot = clusters
    ys = (y - ot.center) / ot.scale
    c1, n1 = estimate_centroids(ys, ot.h, n_samples=20_000, seed=3, block_size=1000)
    c2, n2 = estimate_centroids(ys, ot.h, n_samples=20_000, seed=3, block_size=1000, chunk=7)
    np.testing.assert_array_equal(n1, n2)
    np.testing.assert_allclose(c1, c2, atol=1e-6)
    kw = dict(n=700, k=5, angle_threshold=20, seed=4, centroids=c1, block_size=500, progress=False)
    a = generate(y, ot, **kw)
    b = generate(y, ot, chunk=7, **kw)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_allclose(a.codes, b.codes, atol=1e-6)
    assert a.rejection_rate == b.rejection_rate


def test_dask_client_gives_the_same_result(clusters):
    distributed = pytest.importorskip("distributed")
    y, ot = clusters
    kw = dict(n=600, k=6, angle_threshold=20, seed=5, centroid_samples=10_000, block_size=400, progress=False)
    local = generate(y, ot, **kw)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        remote = generate(y, ot, client=client, **kw)
    np.testing.assert_array_equal(local.cells, remote.cells)
    np.testing.assert_array_equal(local.codes, remote.codes)
    np.testing.assert_array_equal(local.centroids, remote.centroids)
    assert local.rejection_rate == remote.rejection_rate


def test_deterministic_in_seed(clusters):
    y, ot = clusters
    kw = dict(n=300, angle_threshold=20, centroid_samples=10_000, block_size=500, progress=False)
    a, b, c = generate(y, ot, seed=1, **kw), generate(y, ot, seed=1, **kw), generate(y, ot, seed=2, **kw)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, c.codes)


def test_centroids_of_voronoi_cells():
    """With h_i = -|y_i|^2 / 2 the power cells are Voronoi cells: four quadrants."""
    y = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    cent, counts = estimate_centroids(y, -0.5 * (y**2).sum(1), n_samples=40_000, seed=0, chunk=3)
    assert counts.sum() == 40_000 and counts.min() > 9000
    np.testing.assert_allclose(cent, y, atol=0.02)
    ball, _ = estimate_centroids(y, -0.5 * (y**2).sum(1), n_samples=40_000, seed=0, source="ball")
    # The centroid of a quarter of the unit disk is at (4 / 3 pi, 4 / 3 pi).
    np.testing.assert_allclose(np.abs(ball), 4 / (3 * np.pi), atol=0.02)


def test_empty_cell_gets_a_finite_fallback_centroid():
    y = np.array([[0.5, 0.5], [-0.5, -0.5], [2.0, 0.0]])
    cent, counts = estimate_centroids(y, np.array([0.0, 0.0, -100.0]), n_samples=5000, seed=0)
    assert counts[2] == 0 and np.isfinite(cent).all()
    np.testing.assert_allclose(cent[2], [1.0, 0.0])  # the code projected onto the cube


def test_all_rejected_gives_a_clear_error(clusters):
    y, ot = clusters
    with pytest.raises(RuntimeError, match="angle_threshold"):
        generate(y, ot, n=100, angle_threshold=1e-6, centroid_samples=2000, block_size=200, progress=False)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(y=np.zeros(5)), "2-D array"),
        (dict(y=np.full((201, 2), np.nan)), "NaN"),
        (dict(h=np.zeros(3)), "shape"),
        (dict(h=np.full(201, np.nan)), "NaN"),
        (dict(k=0), "k must be"),
        (dict(angle_threshold=0.0), "angle_threshold"),
        (dict(n=0), "n must be"),
        (dict(scale=-1.0), "scale"),
        (dict(center=np.zeros(3)), "center"),
        (dict(source="sphere"), "source"),
        (dict(centroids=np.zeros((5, 2))), "centroids"),
    ],
)
def test_bad_inputs(clusters, change, match):
    y, ot = clusters
    fields = {k: change.pop(k) for k in ("h", "scale", "center", "source") if k in change}
    kw = dict(n=10, centroid_samples=1000, progress=False)
    with pytest.raises(ValueError, match=match):  # a bad result fails when built or when used
        generate(change.pop("y", y), dataclasses.replace(ot, **fields), **{**kw, **change})


def test_result_must_be_an_ot_result(clusters):
    y, ot = clusters
    with pytest.raises(TypeError, match="OTResult"):
        generate(y, {"h": ot.h}, n=10, progress=False)


def test_with_the_real_solver(clusters):
    """The sampler consumes a real ``vegan.ot.OTResult`` (scaling and source from
    the solver). A few iterations suffice: the gap guarantee does not depend on
    how well h is converged."""
    solve = pytest.importorskip("vegan.ot").solve
    y, _ = clusters
    ot = solve(y, max_iter=5, n_samples=2048, eval_samples=2048, progress=False)
    out = generate(y, ot, n=500, angle_threshold=20, centroid_samples=10_000, progress=False)
    assert out.codes.shape == (500, 2) and not _in_gap(out.codes).any()
