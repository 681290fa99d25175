"""Robustness family of ``vegan.ot.solve`` with its defaults (issue 23): converged / iterations / seconds / error.

    .venv/bin/python benchmarks/ot_family.py [--dims 1,2,3,8] [--ns 300,1000] [--ns-1d 300,20000]
        [--tol 0.05] [--budget-iter 300] [--threads 1] [--method auto|sampled] [--json]
        [--pysdot /work/peers/bin/python]

Cases: every ``d`` in ``--dims`` x codes (``uniform`` in the unit cube, ``gap``: two
tight clusters at -3 and +3 along every axis, spread 0.1) x weights (``uniform``, and
``1:6``: drawn in [1, 6]) x ``n``. Each is solved by ``vegan.ot.solve(y, nu, tol=...)``
with defaults (``max_iter`` from ``--budget-iter``, default 300 as in OTConfig);
``--method sampled`` forces the Monte Carlo solver in 2-D and 3-D (the default there is exact cells).

The reported error is measured here, independently of the solver:

* d = 1: exact, from the interval cells of the returned ``h``
  (:func:`vegan.ot.exact1d.interval_masses`);
* d = 2: exact, from the polygon cells of the returned ``h`` on the float32 codes the kernel
  scores (:func:`vegan.ot.exact2d.cells`, recomputed here), and beside it the kernel's own
  assignment of a regular grid of ``--grid``^2 cell midpoints (deterministic quadrature; its
  own error is about a grid step times a cell's perimeter over its area, large on sliver cells);
* d = 3 solved exactly (``exact-3d``): exact, from the polytope cells of the returned ``h`` on the
  float32 codes (:func:`vegan.ot.exact3d.cells`, recomputed here);
* otherwise (d >= 3): i.i.d. uniform points (seed 12345, never used by the solver), as many as
  ``benchmarks/ot_solve.py``'s shared check uses for a noise of ``--check-noise`` on the max.

``--pysdot PYTHON`` also solves every d = 2 and d = 3 case with the peer pysdot (damped Newton on
exact Laguerre cells, the method of Kitagawa, Merigot and Thibert) in that interpreter
(``benchmarks/peers/pysdot_solve.py`` says how to set one up), on the same float32 codes in the
same cube, and scores its potential with the same exact check.

Codes are drawn in float64 and de-duplicated in float32 after scaling (coinciding codes
cannot be split by any potential; the solver reports them).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vegan.ot import make_problem, solve
from vegan.ot.assign import assign_counts
from vegan.ot.exact1d import interval_masses
from vegan.ot.exact2d import cells
from vegan.ot.exact3d import cells as cells_3d
from vegan.ot.solver import noise_z

CHECK_SEED = 12345
PYSDOT_SCRIPT = Path(__file__).resolve().parent / "peers" / "pysdot_solve.py"


def make_case(codes: str, weights: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if codes == "uniform":
        y = rng.uniform(size=(n, d))
    else:
        side = np.where(np.arange(n) < n // 2, -3.0, 3.0)[:, None]
        y = side + 0.1 * rng.normal(size=(n, d))
    for _ in range(10):  # distinct after scaling to float32, as the solver sees them
        z = make_problem(y).y
        _, first = np.unique(z, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(n), first)
        if not len(dup):
            break
        y[dup] += 1e-3 * rng.normal(size=(len(dup), d))
    rng.shuffle(y)
    nu = np.ones(n) if weights == "uniform" else rng.uniform(1.0, 6.0, n)
    return y, nu / nu.sum()


def kernel_grid_masses(z: np.ndarray, h: np.ndarray, grid: int) -> np.ndarray:
    """The kernel's cell masses on a ``grid`` x ``grid`` midpoint grid of the square."""
    yt, ht = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(h)
    counts = torch.zeros(len(z), dtype=torch.float64)
    g = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    for lo in range(0, grid, 256):
        gx, gy = torch.meshgrid(g[lo : lo + 256], g, indexing="ij")
        counts += assign_counts(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), yt, ht).counts.to(torch.float64)
    return counts.numpy() / grid**2


def verify(z: np.ndarray, h: np.ndarray, nu: np.ndarray, grid: int, noise: float, exact_3d: bool) -> tuple[dict, str]:
    """Max and L1 cell errors of the potential ``h`` on the scaled codes ``z``, measured here."""
    n, d = z.shape
    extra = {}
    if d == 1:
        w = interval_masses(z[:, 0], h)
        how = "exact"
    elif d == 2:
        w = cells(z.astype(np.float32).astype(np.float64), h)[0]
        how = "exact polygons"
        extra["grid_max"] = float((np.abs(kernel_grid_masses(z, h, grid) - nu) / nu).max())
    elif exact_3d:
        w = cells_3d(z.astype(np.float32).astype(np.float64), h)[0]
        how = "exact polytopes"
    else:
        yt, ht = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(h)
        counts = torch.zeros(n, dtype=torch.float64)
        q = float(((1 - nu) / nu).max())
        total = int(math.ceil(noise_z(n) ** 2 * q / noise**2))
        how = f"{total:.2g} iid"
        gen = torch.Generator().manual_seed(CHECK_SEED)
        for lo in range(0, total, 1 << 16):
            x = torch.rand(min(1 << 16, total - lo), d, generator=gen) * 2 - 1
            counts += assign_counts(x, yt, ht).counts.to(torch.float64)
        w = counts.numpy() / total
    err = np.abs(w - nu)
    return {"max": float((err / nu).max()), "l1": float(err.sum()), "empty": int((w == 0).sum()), **extra}, how


def solve_with_pysdot(python: str, z: np.ndarray, nu: np.ndarray, tol: float) -> dict:
    """pysdot on the float32 codes vegan's kernel scores, in its own interpreter (NumPy < 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        case, out = Path(tmp) / "case.npz", Path(tmp) / "out.npz"
        np.savez(case, z=z.astype(np.float32).astype(np.float64), nu=nu, tol=tol)
        proc = subprocess.run([python, str(PYSDOT_SCRIPT), str(case), str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pysdot peer failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        got = np.load(out)
        return {k: got[k].item() if got[k].ndim == 0 else got[k] for k in got.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="1,2,3,8")
    ap.add_argument("--ns", default="300,1000", help="n for d >= 2")
    ap.add_argument("--ns-1d", default="300,20000", help="n for d = 1")
    ap.add_argument("--tol", type=float, default=0.05)
    ap.add_argument("--budget-iter", type=int, default=300)
    ap.add_argument("--grid", type=int, default=2048)
    ap.add_argument("--check-noise", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--method", default="auto", choices=["auto", "sampled"], help="OTConfig.method")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pysdot", metavar="PYTHON", help="interpreter with pysdot 0.2.16 and NumPy < 2 (peer, d = 2, 3)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for d in (int(v) for v in args.dims.split(",")):
        ns = args.ns_1d if d == 1 else args.ns
        for n in (int(v) for v in ns.split(",")):
            for codes in ("uniform", "gap"):
                for weights in ("uniform", "1:6"):
                    y, nu = make_case(codes, weights, n, d)
                    t0 = time.perf_counter()
                    res = solve(y, nu, tol=args.tol, max_iter=args.budget_iter, progress=False, method=args.method)
                    secs = time.perf_counter() - t0
                    z = res.scale_codes(y)
                    exact_3d = res.execution.get("mode") == "exact-3d"
                    ver, how = verify(z, res.h, nu, args.grid, args.check_noise, exact_3d)
                    row = {
                        "d": d,
                        "n": n,
                        "codes": codes,
                        "weights": weights,
                        "method": res.execution.get("mode", args.method),
                        "converged": bool(res.converged),
                        "iterations": res.iterations,
                        "seconds": round(secs, 2),
                        "own_max": res.marginal_error["max"],
                        "max": ver["max"],
                        "l1": ver["l1"],
                        "empty": ver["empty"],
                        "grid_max": ver.get("grid_max"),
                        "check": how,
                    }
                    if args.pysdot and d in (2, 3):
                        peer = solve_with_pysdot(args.pysdot, z, nu, args.tol)
                        peer_ver, _ = verify(z, peer["h"], nu, args.grid, args.check_noise, exact_3d=True)
                        row["pysdot"] = {
                            "seconds": round(peer["seconds"], 2),
                            "iterations": peer["iterations"],
                            "failed": peer["failed"],
                            "max": peer_ver["max"],
                            "l1": peer_ver["l1"],
                        }
                    rows.append(row)
                    print(
                        f"d={d:<4d} n={n:<6d} {codes:8s} w={weights:8s} conv={row['converged']!s:5s} "
                        f"it={row['iterations']:<4d} {secs:8.2f}s  own max {row['own_max']:.3g}  "
                        f"verified max {ver['max']:.3g} l1 {ver['l1']:.3g} empty {ver['empty']} ({how})"
                        + (f" kernel grid max {ver['grid_max']:.3g}" if "grid_max" in ver else ""),
                        flush=True,
                    )
                    if "pysdot" in row:
                        p = row["pysdot"]
                        print(
                            f"    pysdot: it={p['iterations']} {p['seconds']:.2f}s failed={p['failed']} "
                            f"verified max {p['max']:.3g} l1 {p['l1']:.3g}",
                            flush=True,
                        )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
