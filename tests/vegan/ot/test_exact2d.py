"""The 2-D exact solve (Laguerre polygons in the square, damped Newton) and its independent checks."""

import numpy as np
import pytest
import torch

from vegan.ot import assign, solve
from vegan.ot.exact2d import cells
from vegan.ot.exact_newton import exact_potential


def _grid_masses(y: np.ndarray, h: np.ndarray, m: int = 1000) -> np.ndarray:
    """Cell masses on an m x m midpoint grid of [-1, 1]^2 with plain float64 numpy (chunked)."""
    g = (np.arange(m) + 0.5) / m * 2 - 1
    counts = np.zeros(len(y))
    for row in g:
        pts = np.column_stack([g, np.full(m, row)])
        counts += np.bincount((pts @ y.T + h).argmax(1), minlength=len(y))
    return counts / m**2


def _gap_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters far apart, weights 1:6: where the sampled solver started with most cells empty."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([rng.normal(-0.8, 0.03, (n // 2, 2)), rng.normal(0.8, 0.03, (n - n // 2, 2))])
    nu = rng.uniform(1, 6, n)
    return y / np.abs(y).max(), nu / nu.sum()


def test_cell_masses_match_a_fine_grid_and_sum_to_one():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (60, 2))
    h = -0.5 * (y**2).sum(1) + rng.normal(0, 0.03, 60)
    masses, _ = cells(y, h)
    assert abs(masses.sum() - 1) < 1e-12
    assert np.abs(masses - _grid_masses(y, h)).max() < 2e-4  # grid spacing 0.002: boundary pixels
    assert (masses == 0).any() and (masses > 0).sum() > 30  # random offsets bury some cells


def test_newton_weights_are_the_derivative_of_the_masses():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (40, 2))
    h = -0.5 * (y**2).sum(1) + rng.normal(0, 0.02, 40)
    m, W = cells(y, h)
    W = W.toarray()
    np.testing.assert_allclose(W, W.T, rtol=1e-9, atol=1e-14)
    for i in np.flatnonzero(m > 0)[:6]:
        e = np.zeros(40)
        e[i] = 1e-6
        fd = (cells(y, h + e)[0] - cells(y, h - e)[0]) / 2e-6
        expected = -W[:, i]
        expected[i] = W[i].sum()
        np.testing.assert_allclose(fd, expected, atol=1e-6 * np.abs(expected).max())


def test_gapped_clusters_with_weights_1_to_6_converge_and_the_kernel_agrees():
    # The sampled solver starts this problem with most cells empty (no sample reaches a buried cell).
    y, nu = _gap_codes(120)
    res = solve(y, nu, tol=0.05, progress=False)
    assert res.converged and res.execution["mode"] == "exact-2d"
    assert res.marginal_error["max"] <= 0.05 and res.marginal_error["n_samples"] == 0
    ys = res.scale_codes(y).astype(np.float64)
    grid = _grid_masses(ys, res.h, m=512)
    assert np.abs(grid / nu - 1).max() < 0.05  # a plain float64 grid, independent of the polygons
    x = torch.rand(400_000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    w = np.bincount(assign(x, torch.from_numpy(ys).float(), torch.from_numpy(res.h)).numpy(), minlength=120)
    assert np.abs(w / len(x) / nu - 1).max() < 0.3  # Monte Carlo noise of 400k samples over 120 cells


def test_newton_keeps_every_cell_nonempty_from_the_voronoi_start():
    y, nu = _gap_codes(400, seed=2)
    h, history, reason = exact_potential(cells, y, nu, tol=0.01)
    assert reason is None and len(history) > 1
    assert all(0 < r["damping"] <= 1 for r in history)
    assert (cells(y, h)[0] > 0).all()


def test_the_sampled_method_still_runs_in_2d():
    y = np.random.default_rng(3).normal(size=(8, 2))
    res = solve(y, tol=0.1, max_iter=50, progress=False, method="sampled")
    assert res.execution["mode"] == "local" and res.history[0]["n_samples"] > 0


@pytest.mark.parametrize(
    "y",
    [
        np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2),  # cocircular
        np.column_stack([np.linspace(-1, 1, 30), np.linspace(-0.5, 0.5, 30)]),  # collinear: qhull cannot hull
    ],
    ids=["grid", "collinear"],
)
def test_degenerate_codes_converge(y):
    nu = np.linspace(1, 3, len(y))
    nu /= nu.sum()
    res = solve(y, nu, tol=0.02, progress=False)
    assert res.converged, res.history[-1]
    masses, _ = cells(res.scale_codes(y).astype(np.float64), res.h)
    assert np.abs(masses / nu - 1).max() <= 0.02


def test_coinciding_codes_are_reported_not_hidden():
    y = np.array([[0.0, 0.0], [0.5, 0.5], [0.5, 0.5], [-0.5, 0.2]])
    res = solve(y, tol=0.05, progress=False)
    assert not res.converged
    assert "coincid" in res.history[-1]["reason"]
