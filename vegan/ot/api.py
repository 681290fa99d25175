"""``solve(codes, tol=...)``: the notebook one-liner, from the flat :class:`OTConfig` to solver + execution.

The maths lives in :class:`vegan.ot.solver.NewtonSolver` and :class:`vegan.ot.problem.Sampling`;
this module only chooses where the counting runs (this process or a Dask cluster),
and wires checkpoints and progress in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vegan.checkpoint import CheckpointDir
from vegan.config import OTConfig
from vegan.ot import exact2d, exact3d
from vegan.ot.counting import LocalEvaluator
from vegan.ot.exact1d import exact_potential, marginal_error_exact
from vegan.ot.exact_newton import exact_potential as exact_cells_potential
from vegan.ot.exact_newton import marginal_error_exact as exact_cells_error
from vegan.ot.problem import OTProblem, Sampling, make_problem
from vegan.ot.solver import NewtonSolver, OTResult, run
from vegan.progress import Progress


def resolve_config(config: OTConfig | None, overrides: dict[str, Any]) -> OTConfig:
    """Config plus keyword overrides, validated (a misspelt override is an error)."""
    base = (config or OTConfig()).model_dump()
    unknown = set(overrides) - set(OTConfig.model_fields)
    if unknown:
        raise TypeError(f"unknown OTConfig field(s): {', '.join(sorted(unknown))}")
    return OTConfig.model_validate({**base, **overrides})


def solver_from_config(cfg: OTConfig) -> NewtonSolver:
    return NewtonSolver(
        tol=cfg.tol,
        max_iter=cfg.max_iter,
        n_samples=cfg.n_samples,
        max_samples=cfg.max_samples,
        check_samples=cfg.eval_samples,
    )


def sampling_from_config(cfg: OTConfig) -> Sampling:
    return Sampling(seed=cfg.seed, source=cfg.source, sampler=cfg.sampler, precision=cfg.precision)


def make_evaluator(problem: OTProblem, cfg: OTConfig, client=None):
    """Local evaluator, or a Dask one on ``client`` (the run's cluster, :mod:`vegan.cluster`).

    A problem whose codes stay in a Zarr store (``problem.y is None``) is counted by workers
    that read the store themselves; the local evaluator loads it into this process.
    """
    if client is None:
        return LocalEvaluator(problem, problem.sampling, cfg.device)
    from vegan.ot.distributed import DaskEvaluator

    return DaskEvaluator(problem, client=client, mode=cfg.mode, device=cfg.device)


def exact_result(
    problem: OTProblem, h: np.ndarray, history: list, converged: bool, iterations: int, ev: dict, mode: str
) -> OTResult:
    """The result of an exact (unsampled) solve: no shards, no workers, the error from exact cell masses."""
    return OTResult(
        h=h,
        center=problem.center.copy(),
        scale=problem.scale,
        source=problem.source,
        nu=problem.nu if not problem.nu.flags.writeable else problem.nu.copy(),
        history=history,
        converged=converged,
        iterations=iterations,
        marginal_error=ev,
        execution={"mode": mode, "shards": None, "workers": None},
    )


def solve_exact_1d(problem: OTProblem, tol: float) -> OTResult:
    """The closed-form 1-D solve, checked by rebuilding its cells from ``h`` (see :mod:`vegan.ot.exact1d`)."""
    y = problem.targets().numpy()[:, 0]
    h = exact_potential(y, problem.nu)
    ev = marginal_error_exact(y, h, problem.nu)
    record = {"iteration": 1, "exact": True, "max_rel_error": ev["max"], "l1_rel_error": ev["l1"]}
    dup = int(len(y) - len(np.unique(y)))
    if dup:  # coinciding lines cannot split their mass: say so instead of a silent error
        record["reason"] = f"{dup} code(s) coincide with another after scaling to float32; their cells merge"
    return exact_result(problem, h, [record], ev["max"] <= tol, 1, ev, "exact-1d")


EXACT_CELLS = {2: exact2d.cells, 3: exact3d.cells}
"""Dimensions solved by damped Newton on exact cells with the cube source: their cell measure."""


def solve_exact_cells(problem: OTProblem, cfg: OTConfig, progress: bool = False) -> OTResult:
    """Damped Newton on exact Laguerre cells in the cube (polygons in 2-D, :mod:`vegan.ot.exact2d`; polytopes in
    3-D, :mod:`vegan.ot.exact3d`), checked by recomputing the cells of the returned ``h``. Each iteration is
    cheap enough that no checkpoint is kept."""
    measure = EXACT_CELLS[problem.d]
    y = problem.targets().numpy().astype(np.float64)  # the float32 codes the kernel will score
    bar = Progress(cfg.max_iter, f"OT solve (exact {problem.d}-D)", enabled=progress)

    def tick(record: dict) -> None:
        bar.set_postfix({"max_err": f"{record['max_rel_error']:.3g}"}, refresh=False)
        bar.update(1)

    try:
        h, history, reason = exact_cells_potential(measure, y, problem.nu, cfg.tol, cfg.max_iter, on_iteration=tick)
    finally:
        bar.close()
    ev = exact_cells_error(measure, y, h, problem.nu)
    converged = reason is None and ev["max"] <= cfg.tol
    if not converged:
        history.append({"iteration": len(history), "exact": True, "reason": reason or "rounding of the cells"})
    iterations = len([r for r in history if "max_rel_error" in r])
    return exact_result(problem, h, history, converged, iterations, ev, f"exact-{problem.d}d")


def solve(
    y: Any,
    nu: Any = None,
    config: OTConfig | None = None,
    checkpoints: CheckpointDir | None = None,
    progress: bool = True,
    client=None,
    **overrides: Any,
) -> OTResult:
    """Solve the semi-discrete OT problem from the source measure to ``y`` (weights ``nu``).

    ``y`` is an array of codes, or a Zarr array / :class:`vegan.ot.targets.ZarrTargets`:
    with a ``client`` the workers then compute the scaling and count cells from the store
    and this process holds O(n) floats (h, weights, solver state), never the codes.

    With ``method="auto"`` (the default), codes of dimension 1 are solved exactly (interval
    cells, :mod:`vegan.ot.exact1d`), and codes of dimension 2 or 3 with the cube source by damped
    Newton on exact cells (polygons, :mod:`vegan.ot.exact2d`; polytopes, :mod:`vegan.ot.exact3d`):
    no sampling, the error measured from exact cell masses, no checkpoints (a solve is seconds).
    ``method="sampled"`` forces the Monte Carlo solver in 2-D and 3-D (1-D is always exact).

    Resumes from the newest checkpoint in ``checkpoints`` (of the same problem),
    checkpoints every ``checkpoint_every`` iterations and at the end, and stops
    once a fresh-sample max relative cell error is ``<= tol`` or after ``max_iter``.
    """
    from vegan.cluster import Tasks

    cfg = resolve_config(config, overrides)
    problem = make_problem(y, nu, sampling_from_config(cfg), Tasks(client))
    if problem.d == 1:
        return solve_exact_1d(problem, cfg.tol)
    if problem.d in EXACT_CELLS and problem.source == "cube" and cfg.method == "auto":
        return solve_exact_cells(problem, cfg, progress)
    evaluate = make_evaluator(problem, cfg, client)
    try:
        res = run(solver_from_config(cfg), problem, evaluate, checkpoints, cfg.checkpoint_every, progress)
        res.execution = evaluate.describe()  # what mode=auto chose, for the stage's info
        return res
    finally:
        evaluate.close()
