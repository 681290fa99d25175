"""One OT solve on a set of codes, printed iteration by iteration (to diagnose the solver).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ot_history.py CODES [--subsample 2000] \
        [--per-code 16] [--max-per-code 64] [--max-iter 40] [--tol 0.3]

``CODES`` is a .npy file or a Zarr store of latent codes (``vegan.latents.load_codes``).
``--subsample`` solves a random subset (rng 0) of that many codes. Sample sizes are
given per code (``n_samples = per_code * n``), as in the ``demo`` preset (16 / 64).
Each line is the solver's history record of one iteration; the last line gives the
verified (fresh-check) error, the wall seconds and the samples spent per code
(training + checks), which is the figure to compare on a shared, loaded machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import vegan.ot.solver as solver_mod
from vegan.ot import solve


def load(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    from vegan.latents import load_codes

    return np.asarray(load_codes(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codes")
    ap.add_argument("--subsample", type=int, default=None)
    ap.add_argument("--per-code", type=int, default=16)
    ap.add_argument("--max-per-code", type=int, default=64)
    ap.add_argument("--max-iter", type=int, default=40)
    ap.add_argument("--tol", type=float, default=0.3)
    args = ap.parse_args()
    y = load(args.codes)
    if args.subsample and args.subsample < len(y):
        y = y[np.random.default_rng(0).choice(len(y), args.subsample, replace=False)]
    n = len(y)

    step = solver_mod.NewtonSolver.step

    def printing_step(self, state, problem, evaluate):
        out = step(self, state, problem, evaluate)
        rec = out.history[-1]
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()), flush=True)
        return out

    solver_mod.NewtonSolver.step = printing_step
    t = time.perf_counter()
    res = solve(
        y,
        tol=args.tol,
        n_samples=args.per_code * n,
        max_samples=args.max_per_code * n,
        max_iter=args.max_iter,
        progress=False,
    )
    seconds = time.perf_counter() - t
    spent = sum(r["n_samples"] + r.get("eval_samples", 0) for r in res.history)
    if res.history and "eval_samples" not in res.history[-1]:
        spent += res.marginal_error["n_samples"]  # the report-only check after max_iter
    print(
        f"RESULT n={n} converged={res.converged} iterations={res.iterations} "
        f"max={res.marginal_error['max']:.4g} l1={res.marginal_error['l1']:.4g} "
        f"seconds={seconds:.1f} samples_per_code={spent / n:.0f}"
    )


if __name__ == "__main__":
    main()
