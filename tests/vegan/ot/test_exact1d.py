"""The 1-D exact solve (interval cells) and its independent check."""

import numpy as np
import torch

from vegan.ot import assign, solve
from vegan.ot.exact1d import exact_potential, interval_masses


def gapped_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters with a wide gap and weights in [0.3, 1.7]: the case the sampled Newton stalled on."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([rng.normal(-3, 0.1, n // 2), rng.normal(3, 0.1, n - n // 2)])[:, None]
    nu = rng.uniform(0.3, 1.7, n)
    return y, nu / nu.sum()


def test_interval_masses_match_a_dense_grid():
    rng = np.random.default_rng(1)
    y, h = rng.normal(size=40), rng.normal(size=40)
    x = (np.arange(200_000) + 0.5) / 100_000 - 1  # midpoints of a fine grid on [-1, 1]
    grid = np.bincount(np.argmax(np.outer(x, y) + h, axis=1), minlength=40) / len(x)
    exact = interval_masses(y, h)
    assert abs(exact.sum() - 1) < 1e-12
    assert np.abs(exact - grid).max() < 2e-5
    assert (exact == 0).sum() > 0  # random offsets leave some lines below the envelope


def test_exact_potential_hits_every_mass():
    y, nu = gapped_codes(301)
    y = y[:, 0] / np.abs(y).max()
    np.testing.assert_allclose(interval_masses(y, exact_potential(y, nu)), nu, rtol=1e-8, atol=0)


def test_solve_1d_gapped_converges_and_the_kernel_agrees():
    # The sampled solver stopped here at 300 iterations, max error 22.3, 52 empty cells (issue 23).
    y, nu = gapped_codes(300)
    res = solve(y, nu, tol=0.05, progress=False)
    assert res.converged and res.iterations == 1
    assert res.marginal_error["max"] < 1e-6 and res.marginal_error["n_samples"] == 0
    x = torch.rand(400_000, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    yt = torch.from_numpy(res.scale_codes(y).astype(np.float32))
    w = np.bincount(assign(x, yt, torch.from_numpy(res.h)).numpy(), minlength=300) / len(x)
    assert (w > 0).all()
    assert np.abs(w / nu - 1).max() < 0.35  # Monte Carlo noise of 400k samples over 300 cells


def test_solve_1d_reports_coinciding_codes():
    y = np.array([[0.0], [0.5], [0.5], [1.0]])
    res = solve(y, tol=0.05, progress=False)
    assert not res.converged
    assert "coincide" in res.history[-1]["reason"]
    assert res.marginal_error["max"] == 1.0  # one of the twins gets nothing
