"""The 3-D exact solve (Laguerre polytopes in the cube, damped Newton) and its independent checks."""

import numpy as np
import pytest
import torch

from vegan.ot import assign, solve
from vegan.ot.exact3d import cells
from vegan.ot.exact_newton import exact_potential


def _mc_masses(y: np.ndarray, h: np.ndarray, n: int = 1_000_000, seed: int = 0) -> np.ndarray:
    """Cell masses from ``n`` i.i.d. uniform points of [-1, 1]^3 with plain float64 numpy (chunked)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(y))
    for lo in range(0, n, 250_000):
        x = rng.uniform(-1, 1, (min(250_000, n - lo), 3))
        counts += np.bincount((x @ y.T + h).argmax(1), minlength=len(y))
    return counts / n


def _within_mc_noise(masses: np.ndarray, mc: np.ndarray, n: int = 1_000_000) -> bool:
    """Every cell within 5 binomial standard errors (plus a float floor for empty cells)."""
    return bool((np.abs(mc - masses) <= 5 * np.sqrt(masses * (1 - masses) / n) + 1e-12).all())


def _gap_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters far apart, weights 1:6: where the sampled solver starts with most cells unseen."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([rng.normal(-0.8, 0.03, (n // 2, 3)), rng.normal(0.8, 0.03, (n - n // 2, 3))])
    nu = rng.uniform(1, 6, n)
    return y / np.abs(y).max(), nu / nu.sum()


def test_cell_masses_match_monte_carlo_and_sum_to_one():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (60, 3))
    h = -0.5 * (y**2).sum(1) + rng.normal(0, 0.03, 60)
    masses, _ = cells(y, h)
    assert abs(masses.sum() - 1) < 1e-12
    assert _within_mc_noise(masses, _mc_masses(y, h))
    assert (masses == 0).any() and (masses > 0).sum() > 30  # random offsets bury some cells


def test_newton_weights_are_the_derivative_of_the_masses():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (40, 3))
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


def test_gapped_clusters_with_weights_1_to_6_converge_where_the_sampled_solver_has_not():
    y, nu = _gap_codes(120)
    res = solve(y, nu, tol=0.05, progress=False)
    assert res.converged and res.execution["mode"] == "exact-3d"
    assert res.marginal_error["max"] <= 0.05 and res.marginal_error["n_samples"] == 0
    ys = res.scale_codes(y).astype(np.float64)
    x = torch.rand(400_000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    w = np.bincount(assign(x, torch.from_numpy(ys).float(), torch.from_numpy(res.h)).numpy(), minlength=120)
    assert np.abs(w / len(x) / nu - 1).max() < 0.3  # the kernel agrees, up to the noise of 400k samples
    sampled = solve(y, nu, tol=0.05, max_iter=20, progress=False, method="sampled")
    assert sampled.execution["mode"] == "local" and sampled.history[0]["n_samples"] > 0
    assert not sampled.converged and sampled.marginal_error["max"] > 0.05  # the same budget is not enough there


def test_newton_keeps_every_cell_nonempty_from_the_voronoi_start():
    y, nu = _gap_codes(200, seed=2)
    h, history, reason = exact_potential(cells, y, nu, tol=0.01)
    assert reason is None and len(history) > 1
    assert all(0 < r["damping"] <= 1 for r in history)
    assert (cells(y, h)[0] > 0).all()


_G = np.linspace(-1, 1, 5)
_PLANE = np.stack(np.meshgrid(_G, _G), -1).reshape(-1, 2)


@pytest.mark.parametrize(
    "y",
    [
        np.stack(np.meshgrid(_G, _G, _G), -1).reshape(-1, 3),  # cospherical: degenerate hull facets
        np.column_stack([_PLANE, np.full(25, 0.3)]),  # coplanar: qhull cannot hull the lifted points
        np.column_stack([_PLANE, _PLANE @ [0.3, -0.7]]),  # a tilted plane (nearly flat after float32)
        np.outer(np.linspace(-1, 1, 30), [1.0, 0.5, -0.25]),  # collinear
    ],
    ids=["grid", "coplanar", "tilted", "collinear"],
)
def test_degenerate_codes_converge(y):
    nu = np.linspace(1, 3, len(y))
    nu /= nu.sum()
    res = solve(y, nu, tol=0.02, progress=False)
    assert res.converged and res.execution["mode"] == "exact-3d", res.history[-1]
    ys = res.scale_codes(y).astype(np.float32).astype(np.float64)
    masses, _ = cells(ys, res.h)
    assert abs(masses.sum() - 1) < 1e-12  # a missed neighbour would let two cells overlap
    assert np.abs(masses / nu - 1).max() <= 0.02
    assert _within_mc_noise(masses, _mc_masses(ys, res.h, n=200_000), n=200_000)


def test_coinciding_codes_are_reported_not_hidden():
    y = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.1], [0.5, 0.5, 0.1], [-0.5, 0.2, 0.3], [0.1, -0.6, 0.9]])
    res = solve(y, tol=0.05, progress=False)
    assert not res.converged
    assert "coincid" in res.history[-1]["reason"]
