"""The semi-discrete OT solver: exact cell areas in 2-D, exact discrete OT, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import OTConfig
from vegan.ot import OTResult, assign, load_result, save_result, solve
from vegan.ot.problem import make_problem, sample_slice
from vegan.storage import Storage

FAST = dict(progress=False, n_samples=4096, eval_samples=16384, eval_every=10)


def _quadrature_areas(res: OTResult, y: np.ndarray, m: int = 800) -> np.ndarray:
    """Cell areas of [-1,1]^2 on an m x m midpoint grid, with plain numpy (independent of the kernel)."""
    g = (np.arange(m) + 0.5) / m * 2 - 1
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    ys = (y - res.center) / res.scale
    return np.bincount((grid @ ys.T + res.h).argmax(1), minlength=len(y)) / len(grid)


@pytest.mark.parametrize("nu", [None, np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3])], ids=["uniform", "weighted"])
def test_2d_cells_have_requested_areas(nu):
    y = np.random.default_rng(0).normal(size=(6, 2))
    res = solve(y, nu, tol=0.03, lr=0.03, max_iter=400, **FAST)
    assert res.converged and res.marginal_error["max"] <= 0.03
    target = np.full(6, 1 / 6) if nu is None else nu
    areas = _quadrature_areas(res, y)
    assert (np.abs(areas - target) / target).max() < 0.06


def test_matches_exact_discrete_ot_on_a_grid():
    """Grid points assigned by the solved h agree with POT's exact plan (up to cell boundaries)."""
    ot = pytest.importorskip("ot")
    y = np.random.default_rng(1).normal(size=(5, 2))
    nu = np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    res = solve(y, nu, tol=0.02, lr=0.03, max_iter=400, **FAST)
    m = 48
    g = (np.arange(m) + 0.5) / m * 2 - 1
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    ys = res.scale_codes(y).astype(np.float64)
    plan = ot.emd(np.full(len(grid), 1 / len(grid)), nu, ot.dist(grid, ys))
    emd_cell = plan.argmax(1)
    ours = assign(torch.from_numpy(grid).float(), torch.from_numpy(ys).float(), torch.from_numpy(res.h).float())
    agree = float((ours.numpy() == emd_cell).mean())
    assert agree > 0.97, agree


def test_resume_gives_the_uninterrupted_trajectory(tmp_path):
    y = np.random.default_rng(2).normal(size=(50, 3))
    kw = dict(FAST, tol=1e-9, checkpoint_every=7, patience=5)  # patience: sample growth happens too
    full = solve(y, max_iter=40, **kw)
    ckpt = CheckpointDir(Storage(str(tmp_path / "ot")))
    first = solve(y, max_iter=18, checkpoints=ckpt, **kw)
    assert first.iterations == 18 and ckpt.steps()[-1] == 18
    resumed = solve(y, max_iter=40, checkpoints=ckpt, **kw)
    assert resumed.iterations == 40
    np.testing.assert_allclose(resumed.h, full.h, rtol=0, atol=1e-6)
    assert [r["n_samples"] for r in resumed.history] == [r["n_samples"] for r in full.history]
    assert max(r["n_samples"] for r in full.history) > 4096  # the growth rule fired


def test_resume_refuses_another_problems_checkpoints(tmp_path):
    ckpt = CheckpointDir(Storage(str(tmp_path / "ot")))
    solve(np.random.default_rng(3).normal(size=(10, 2)), max_iter=3, checkpoints=ckpt, **FAST)
    with pytest.raises(ValueError, match="another OT problem"):
        solve(np.random.default_rng(4).normal(size=(10, 2)), max_iter=3, checkpoints=ckpt, **FAST)


def test_sample_growth_is_capped():
    y = np.random.default_rng(5).normal(size=(20, 2))
    res = solve(y, max_iter=60, tol=1e-9, patience=1, growth=3.0, max_samples=6000, **FAST)
    sizes = [r["n_samples"] for r in res.history]
    assert sizes[0] == 4096 and max(sizes) == 8192  # capped at 6000, rounded up to whole slices
    assert sizes == sorted(sizes)


def test_history_result_and_roundtrip(tmp_path):
    y = np.random.default_rng(6).normal(size=(30, 4)).astype(np.float32)
    res = solve(torch.from_numpy(y), max_iter=20, tol=1e-9, ema=0.9, **FAST)
    assert res.iterations == 20 and not res.converged
    assert {"iteration", "energy", "grad_norm", "n_samples", "seconds"} <= set(res.history[0])
    assert "max_rel_error" in res.history[9] and "l1_rel_error" in res.history[9]
    assert set(res.marginal_error) >= {"max", "l1"}
    assert np.abs(res.scale_codes(y)).max() <= 1 + 1e-6
    st = Storage(str(tmp_path / "res"))
    save_result(st, res)
    back = load_result(st)
    np.testing.assert_array_equal(back.h, res.h)
    np.testing.assert_array_equal(back.center, res.center)
    assert back.history == res.history and back.source == res.source and back.scale == res.scale


def test_energy_decreases_and_error_drops():
    y = np.random.default_rng(7).normal(size=(100, 4))
    res = solve(y, max_iter=100, tol=1e-9, lr=0.02, **FAST)
    errs = [r["max_rel_error"] for r in res.history if "max_rel_error" in r]
    assert errs[-1] < 0.5 * errs[0]
    assert res.history[-1]["energy"] < res.history[0]["energy"]


def test_warm_start_runs_and_converges():
    y = np.random.default_rng(8).normal(size=(64, 2))
    res = solve(y, warm_start=True, tol=0.15, lr=0.02, max_iter=300, **FAST)
    assert res.converged


def test_ball_source():
    x = sample_slice(3, 4096, seed=0, tag=0, iteration=0, index=0, source="ball")
    r = x.norm(dim=1)
    assert r.max() <= 1 and abs(float((r**3).mean()) - 0.5) < 0.02  # uniform: r^d ~ U(0,1)
    y = np.random.default_rng(9).normal(size=(5, 2))
    res = solve(y, source="ball", tol=0.05, lr=0.03, max_iter=300, **FAST)
    assert res.converged and res.source == "ball"
    assert np.linalg.norm(res.scale_codes(y), axis=1).max() <= 1 + 1e-6


def test_samples_are_a_function_of_seed_iteration_slice():
    a = sample_slice(4, 256, seed=1, tag=0, iteration=5, index=2)
    assert torch.equal(a, sample_slice(4, 256, seed=1, tag=0, iteration=5, index=2))
    for other in [dict(seed=2, iteration=5, index=2), dict(seed=1, iteration=6, index=2), dict(seed=1, iteration=5, index=3)]:
        assert not torch.equal(a, sample_slice(4, 256, tag=0, **other))
    assert not torch.equal(a, sample_slice(4, 256, seed=1, tag=1, iteration=5, index=2))  # eval != train


@pytest.mark.parametrize(
    "y, nu, match",
    [
        (np.array([[0.0, 1.0], [np.nan, 0.0]]), None, "NaN or inf"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), None, "NaN or inf"),
        (np.zeros(5), None, "2-D"),
        (np.zeros((1, 3)), None, "at least 2"),
        (np.eye(3), [0.5, 0.5], "length 2"),
        (np.eye(3), [0.5, 0.6, -0.1], "strictly positive"),
        (np.eye(3), [0.2, 0.2, 0.2], "sum to 1"),
    ],
)
def test_bad_inputs(y, nu, match):
    with pytest.raises(ValueError, match=match):
        make_problem(y, nu)
    with pytest.raises(ValueError, match=match):
        solve(y, nu, progress=False)


def test_unknown_override_is_an_error():
    with pytest.raises(TypeError, match="unknown OTConfig"):
        solve(np.eye(3), progress=False, learning_rate=0.1)
    with pytest.raises(ValueError):
        solve(np.eye(3), config=OTConfig(), progress=False, tol=-1)


def test_step_size_decays_only_once_samples_are_capped():
    y = np.random.default_rng(9).normal(size=(50, 3))
    res = solve(y, max_iter=120, tol=1e-9, lr=0.02, patience=5, growth=2.0, n_samples=4096, max_samples=8192,
                lr_decay=0.5, min_lr=0.005, progress=False, eval_samples=16384, eval_every=60)
    lrs = [r["lr"] for r in res.history]
    capped = [r["n_samples"] >= 8192 for r in res.history]
    assert lrs[0] == 0.02 and min(lrs) == 0.005  # decayed down to the floor, not below
    first_decay = next(i for i, lr in enumerate(lrs) if lr < 0.02)
    assert all(capped[first_decay - 1 :])  # only after the sample count reached its cap
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_staged_check_skips_the_full_sample_only_when_it_cannot_pass():
    """Far from the tolerance the 1/16 look decides; within it the full sample is used."""
    from vegan.config import OTConfig
    from vegan.ot.problem import make_problem
    from vegan.ot.solver import local_evaluator, staged_marginal_error, voronoi_potential

    y = np.random.default_rng(10).normal(size=(200, 3))
    problem = make_problem(y, None, "cube")
    h = voronoi_potential(problem.y)  # far from balanced: max error ~ several
    for tol, expected in [(0.05, 2**20 // 16), (50.0, 2**20)]:
        cfg = OTConfig(eval_samples=2**20, tol=tol)
        ev = staged_marginal_error(problem, h, local_evaluator(problem, cfg), cfg, 0, 4096)
        assert ev["n_samples"] == expected
